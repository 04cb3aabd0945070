"""Claim: HNSW answers nearest-neighbour queries >= 20x faster than exact search at
recall@10 >= 0.95 against exact results.

    python bench/search.py [--n 200000] [--dim 1280] [--queries 1000] [--m 16]
                           [--ef-construction 100] [--near] [--bundle DIR --images DIR]

On `n` seeded random unit vectors (the hard case for HNSW: no cluster structure) and
`queries` held-out ones: exact search (IndexFlatIP) vs IndexHNSWFlat(inner product).
efSearch is raised until recall@10 against the exact top-10 reaches 0.95. Reports build
time, memory (serialised index bytes), QPS one query at a time and batched. With --bundle
and --images, also embedding throughput (decode + embed, images/s) through the runtime.
The last line is `ratio=<HNSW / exact QPS, one query at a time>`.
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np

EF_STEPS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def unit_rows(rng, n, dim):
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def qps(index, q, k=10, one_at_a_time=True, limit=200):
    """Queries per second; one at a time uses the first `limit` queries (flat is slow)."""
    if one_at_a_time:
        sub = q[:limit]
        t0 = time.perf_counter()
        for i in range(len(sub)):
            index.search(sub[i:i + 1], k)
        return len(sub) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    index.search(q, k)
    return len(q) / (time.perf_counter() - t0)


def recall_at(ids, ref):
    return float(np.mean([len(set(a) & set(b)) / ref.shape[1] for a, b in zip(ids, ref, strict=True)]))


def index_bytes(index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--near", action="store_true", help="queries = indexed vectors + noise "
                    "(a re-photographed product) instead of independent random vectors")
    ap.add_argument("--bundle")
    ap.add_argument("--images")
    a = ap.parse_args()
    print(f"cores={os.cpu_count()} faiss_threads={faiss.omp_get_max_threads()} "
          f"n={a.n} dim={a.dim} queries={a.queries}")
    rng = np.random.default_rng(0)
    base, q = unit_rows(rng, a.n, a.dim), unit_rows(rng, a.queries, a.dim)
    if a.near:  # cosine ~0.8 to the indexed vector it was made from
        q = base[rng.choice(a.n, a.queries, replace=False)] + 0.75 * q
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(a.dim)
    flat.add(base)
    print(f"exact: build {time.perf_counter() - t0:.2f} s, {index_bytes(flat) / 2**20:.0f} MiB")
    _, ref = flat.search(q, 10)
    flat_one, flat_batch = qps(flat, q), qps(flat, q, one_at_a_time=False)
    print(f"exact: QPS one-at-a-time {flat_one:.1f}, batched {flat_batch:.1f}")

    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(a.dim, a.m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = a.ef_construction
    hnsw.add(base)
    build = time.perf_counter() - t0
    print(f"hnsw M={a.m} efConstruction={a.ef_construction}: build {build:.1f} s, "
          f"{index_bytes(hnsw) / 2**20:.0f} MiB")
    recall = 0.0
    for ef in EF_STEPS:
        hnsw.hnsw.efSearch = ef
        _, ids = hnsw.search(q, 10)
        recall = recall_at(ids, ref)
        print(f"hnsw efSearch={ef}: recall@10 {recall:.4f}")
        if recall >= 0.95:
            break
    if recall < 0.95:
        print("hnsw did not reach recall@10 0.95 at the largest efSearch tried")
    h_one, h_batch = qps(hnsw, q, limit=len(q)), qps(hnsw, q, one_at_a_time=False)
    print(f"hnsw efSearch={hnsw.hnsw.efSearch}: QPS one-at-a-time {h_one:.1f}, "
          f"batched {h_batch:.1f} (batched ratio {h_batch / flat_batch:.1f}x)")
    if a.bundle and a.images:
        embedding_throughput(a.bundle, a.images)
    print(f"ratio={h_one / flat_one:.1f}")


def embedding_throughput(bundle: str, images: str) -> None:
    from sightwise.runtime import Predictor
    from sightwise.search.embed import collect_images, throughput

    records = collect_images(images, "none")[:256]
    rate = throughput(Predictor(bundle, batch_size=32), records)
    print(f"embedding: {rate:.1f} images/s ({len(records)} images, decode + embed)")


if __name__ == "__main__":
    main()
