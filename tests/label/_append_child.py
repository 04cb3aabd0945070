"""Child for the kill -9 test: append answers forever, printing each index once `append`
has returned (the answer is fsynced). The parent SIGKILLs it at chosen moments."""

import sys

from sightwise.label.store import Answer, LabelStore


def main() -> None:
    store = LabelStore(sys.argv[1])
    start = int(sys.argv[2])
    print("ready", flush=True)
    for i in range(start, start + 100_000):
        store.append(Answer(f"img_{i:06d}.png", "scratch" if i % 2 else "ok", "child", "t", "v1",
                            "ok", 0.5))
        print(i, flush=True)


if __name__ == "__main__":
    main()
