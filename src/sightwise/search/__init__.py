"""sightwise.search: visual search over a bundle's `embedding` output (FAISS), torch-free.

Usage::

    from sightwise.search.api import build_index, open_index, query_paths
    build_index("catalogue/", "runs/demo/bundle", "catalogue.index")
    index, predictor = open_index("catalogue.index")      # refuses another bundle
    query_paths(index, predictor, ["photo.jpg"], k=10)     # [[{rank, similarity, path, label, ...}]]

Modules: store (SearchIndex: flat/HNSW, add/remove, atomic save/load), embed (images ->
unit vectors through sightwise.runtime), evaluate (recall@k, mAP), dupes (near-duplicate
groups, split leakage, contact sheet), cli (the `sightwise index` typer sub-app).
"""
