"""The debouncer against hand-worked sequences and an offline brute-force scan."""

from __future__ import annotations

import numpy as np
import pytest

from sightwise.stream.events import Debouncer, Observation


def run(hits: list[str], k=3, n=5, m=3, step=0.2, end="end"):
    """Feed a string per frame ("" = nothing, "a" = label a ...); all events, closed."""
    deb, opened, closed = Debouncer(k, n, m), [], []
    for i, h in enumerate(hits):
        o, c = deb.update(Observation(i * step, i, {lab: 0.5 + 0.01 * i for lab in h}))
        opened += o
        closed += c
    closed += deb.close_all(end)
    return opened, closed


def test_hand_worked_open_and_close():
    #        0   1   2   3   4   5   6   7   8   9  10  11
    seq = ["", "a", "", "a", "a", "a", "", "a", "", "", "", ""]
    opened, closed = run(seq)
    assert [(e.id, e.label) for e in opened] == [(1, "a")]
    (ev,) = closed
    # Opens at frame 4 (frames 1, 3, 4 in the window 0-4); starts at the earliest of them.
    assert (ev.start_frame, ev.end_frame, ev.hits, ev.closed_by) == (1, 7, 5, "clear")
    assert ev.start == pytest.approx(0.2) and ev.end == pytest.approx(1.4)
    assert ev.peak_frame == 7 and ev.peak_score == pytest.approx(0.57)


def test_single_blips_never_open_and_a_dropout_does_not_split():
    assert run(["a", "", "", "a", "", "", "a", "", ""])[1] == []
    _, closed = run(["a"] * 6 + [""] * 2 + ["a"] * 6)  # a 2-frame dropout < M = 3
    assert [(e.start_frame, e.end_frame) for e in closed] == [(0, 13)]


def test_end_of_source_closes_open_events_and_labels_are_independent():
    _, closed = run(["ab", "ab", "ab", "b", "b"], end="stop")
    assert {(e.label, e.closed_by, e.end_frame) for e in closed} == {("a", "stop", 2), ("b", "stop", 4)}


def test_gap_closes_and_forgets_the_window():
    deb = Debouncer(2, 3, 2)
    for i in range(2):
        deb.update(Observation(i, i, {"a": 1.0}))
    assert [e.closed_by for e in deb.close_all("gap")] == ["gap"]
    o, _ = deb.update(Observation(10, 10, {"a": 1.0}))
    assert o == []  # one frame after the gap is not two of the last three


def test_invalid_parameters():
    with pytest.raises(ValueError):
        Debouncer(4, 3, 1)
    with pytest.raises(ValueError):
        Debouncer(1, 1, 0)


def brute_force(h: list[bool], k: int, n: int, m: int) -> list[tuple[int, int]]:
    """(first, last) hit frame of each event, by scanning the whole sequence offline: an
    event opens at a hit frame i with k hits among frames max(i-n+1, after the last close)..i
    and closes at the first frame x >= i+m that ends m clear frames in a row."""
    out, floor, i = [], 0, 0
    while i < len(h):
        lo = max(floor, i - n + 1)
        if h[i] and sum(h[lo:i + 1]) >= k:
            first = next(j for j in range(lo, i + 1) if h[j])
            c = next((x for x in range(i + m, len(h)) if not any(h[x - m + 1:x + 1])), None)
            out.append((first, max(j for j in range(i, len(h) if c is None else c) if h[j])))
            if c is None:
                break
            floor = i = c + 1
        else:
            i += 1
    return out


@pytest.mark.parametrize("k,n,m", [(3, 5, 3), (1, 1, 1), (2, 4, 2), (4, 6, 5)])
def test_matches_brute_force_on_random_sequences(k, n, m):
    rng = np.random.default_rng([k, n, m])
    for trial in range(40):
        p = rng.uniform(0.2, 0.8)
        h = list(rng.random(rng.integers(5, 80)) < p)
        _, closed = run(["a" if x else "" for x in h], k, n, m)
        assert [(e.start_frame, e.end_frame) for e in closed] == brute_force(h, k, n, m), (trial, h)
