"""A process that appends to a PredictionLog without pause, for the kill -9 test.

Usage: python _log_writer.py LOG_DIR RUN_ID. Every record carries (run, seq); after every
50 appends it calls flush() and prints "flushed <seq>" (everything up to seq is durable).
The parent SIGKILLs it at a random moment and checks the folder.
"""

from __future__ import annotations

import sys

from sightwise.monitor.log import PredictionLog


def main() -> None:
    directory, run = sys.argv[1], int(sys.argv[2])
    log = PredictionLog(directory, segment_bytes=64 << 10, flush_s=0.2, keep_images=True)
    print("ready", flush=True)
    seq = 0
    while seq < 10_000_000:  # bounded; the parent kills it long before
        image = bytes([run % 256, seq % 256]) * 64 if seq % 7 == 0 else None
        if log.append({"t": float(run * 10_000_000 + seq), "run": run, "seq": seq,
                       "sha256": f"{run:032x}{seq:032x}", "probs": [0.25, 0.75]}, image):
            seq += 1
        if seq % 50 == 0 and log.flush(timeout=30):
            print(f"flushed {seq - 1}", flush=True)


if __name__ == "__main__":
    main()
