"""Per-frame answers -> debounced events.

A label (a class, or "anomaly") opens an event when it is present in at least K of the last
N processed frames; the event starts at the earliest of those frames. It closes after M
processed frames in a row without it and ends at the last frame that had it. So one
misclassified frame neither opens nor splits an event, and the reported interval is the
span of frames that showed the label, accurate to one sampling step.

Each event keeps its peak (highest-scoring) frame, image included, until it closes, so a
sink can save the frame with its heat map. Memory stays bounded: the window holds N frames
and each open event one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Observation:
    """One processed frame as the debouncer sees it."""
    t: float
    frame: int
    hits: dict[str, float]  # labels present in this frame, with their scores
    payload: Any = None     # kept with the peak: (image, model result) in the runner


@dataclass
class Event:
    id: int
    label: str
    start: float
    end: float
    start_frame: int
    end_frame: int
    peak_score: float
    peak_t: float
    peak_frame: int
    hits: int = 0
    closed_by: str | None = None   # "clear" | "end" | "stop" | "gap"
    peak_payload: Any = field(default=None, repr=False)
    images: dict[str, str] = field(default_factory=dict)  # filled in by a frames sink

    def _peak(self, obs: Observation) -> None:
        score = obs.hits[self.label]
        if score > self.peak_score:
            self.peak_score, self.peak_t, self.peak_frame = score, obs.t, obs.frame
            self.peak_payload = obs.payload

    def add(self, obs: Observation) -> None:
        self.hits += 1
        self.end, self.end_frame = obs.t, obs.frame
        self._peak(obs)

    def to_record(self, kind: str = "event") -> dict:
        """The JSON line: "type" "event" (closed) or "event_open"; times in seconds."""
        rec = {"type": kind, "id": self.id, "label": self.label, "start": round(self.start, 4),
               "end": round(self.end, 4), "peak_score": round(self.peak_score, 6),
               "peak_time": round(self.peak_t, 4), "peak_frame": self.peak_frame,
               "start_frame": self.start_frame, "end_frame": self.end_frame, "frames": self.hits}
        if kind == "event":
            rec["closed_by"] = self.closed_by
            rec.update({f"{k}_image": v for k, v in self.images.items()})
        return rec


class Debouncer:
    """K-of-N opening, M-clear closing, per label (see the module docstring)."""

    def __init__(self, k: int = 3, n: int = 5, m: int = 3):
        if not (1 <= k <= n and m >= 1):
            raise ValueError(f"need 1 <= K <= N and M >= 1, got K={k}, N={n}, M={m}")
        self.k, self.n, self.m = k, n, m
        self.window: deque[Observation] = deque(maxlen=n)
        self.open: dict[str, Event] = {}
        self.clear_run: dict[str, int] = {}
        self.closed_at: dict[str, int] = {}  # frames up to here never count again for a label
        self.next_id = 1

    def update(self, obs: Observation) -> tuple[list[Event], list[Event]]:
        """Feed one processed frame; returns (events opened, events closed) by it."""
        self.window.append(obs)
        opened, closed = [], []
        for label, ev in list(self.open.items()):
            if label in obs.hits:
                ev.add(obs)
                self.clear_run[label] = 0
            else:
                self.clear_run[label] += 1
                if self.clear_run[label] >= self.m:
                    closed.append(self._close(label, "clear"))
        for label in obs.hits:
            if label not in self.open:
                ev = self._maybe_open(label)
                if ev is not None:
                    opened.append(ev)
        return opened, closed

    def _maybe_open(self, label: str) -> Event | None:
        after = self.closed_at.get(label, -1)
        seen = [o for o in self.window if label in o.hits and o.frame > after]
        if len(seen) < self.k:
            return None
        first = seen[0]
        ev = Event(self.next_id, label, first.t, first.t, first.frame, first.frame,
                   peak_score=float("-inf"), peak_t=first.t, peak_frame=first.frame)
        for o in seen:
            ev.add(o)
        self.next_id += 1
        self.open[label] = ev
        self.clear_run[label] = 0
        return ev

    def _close(self, label: str, reason: str) -> Event:
        ev = self.open.pop(label)
        ev.closed_by = reason
        self.closed_at[label] = self.window[-1].frame if self.window else ev.end_frame
        return ev

    def close_all(self, reason: str) -> list[Event]:
        """Close every open event (the source ended, was stopped, or dropped: a gap)."""
        closed = [self._close(label, reason) for label in list(self.open)]
        if reason == "gap":
            self.window.clear()  # frames before an outage do not count towards after it
        return closed
