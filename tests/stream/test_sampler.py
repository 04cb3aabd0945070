"""Frame sampling against a brute-force slot assignment, and the bounded hand-off."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sightwise.stream.sampler import FrameSlot, Sampler
from sightwise.stream.sources import Frame, Gap


@pytest.mark.parametrize("src_fps,fps", [(25, 5), (30, 7), (10, 10), (10, 25), (29.97, 2)])
def test_sampler_keeps_the_first_frame_of_each_slot(src_fps, fps):
    times = np.arange(300) / src_fps
    s = Sampler(fps)
    kept = [i for i, t in enumerate(times) if s.keep(float(t))]
    # Reference: exact rational arithmetic on frame numbers (i / src_fps in slot floor(i*fps/src_fps)).
    slots = [int(np.floor(i * fps / src_fps + 1e-9)) for i in range(len(times))]
    expected = [i for i in range(len(times)) if i == 0 or slots[i] != slots[i - 1]]
    assert kept == expected


def test_sampler_follows_the_clock_across_a_gap():
    s = Sampler(2.0)
    assert [t for t in (0.0, 0.3, 0.6, 5.1, 5.2, 5.5) if s.keep(t)] == [0.0, 0.6, 5.1, 5.5]


def test_sampler_without_rate_keeps_everything():
    s = Sampler(None)
    assert all(s.keep(t) for t in (0.0, 0.0, 0.01))


def _frame(i: int) -> Frame:
    return Frame(image=None, t=i / 10, index=i, arrival=0.0)


def test_slot_drops_oldest_frames_never_markers():
    slot = FrameSlot(2)
    gap = Gap(0.1, 0.5, "test", 1)
    dropped = sum(slot.put(x, drop=True) for x in [_frame(0), gap, _frame(1), _frame(2), _frame(3)])
    assert dropped == 2
    got = [slot.get(0.01) for _ in range(4)]
    assert got[0] is gap and [f.index for f in got[1:3]] == [2, 3] and got[3] is None


def test_slot_waits_for_room_without_dropping():
    slot, stop = FrameSlot(1), threading.Event()
    slot.put(_frame(0), drop=False)
    done = threading.Event()

    def producer():
        slot.put(_frame(1), drop=False, stop=stop)  # blocks: the slot is full
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.3)
    assert slot.get(1.0).index == 0
    assert done.wait(5.0)
    assert slot.get(1.0).index == 1
    t.join(5.0)


def test_slot_capacity_must_be_positive():
    with pytest.raises(ValueError):
        FrameSlot(0)
