"""The annotated review video: each processed frame with its time, label and score drawn on
it (and, for a detector, its heat map), written as H.264 MP4 through PyAV.

The MP4 is fragmented (`frag_keyframe+empty_moov`) and written packet by packet with x264's
zero-latency tuning (no look-ahead): a plain MP4 is unreadable until its index is written
at the end, and x264 holds back ~40 frames by default, so a watch that is killed would
leave nothing to review; this way everything up to the last keyframe plays.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from sightwise.errors import SightwiseError
from sightwise.stream.sinks import Processed, Sink

GOP = 25  # a keyframe (and a fragment) at least this often, in processed frames


def caption(image: Image.Image, lines: list[str], alert: bool) -> Image.Image:
    """`image` with a dark band at the top holding `lines`; red text while an event is open."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    size = max(10, min(out.width // 24, 28))
    font = ImageFont.load_default(size)
    height = int(size * 1.25) * len(lines) + 4
    draw.rectangle((0, 0, out.width, height), fill=(0, 0, 0))
    colour = (255, 80, 80) if alert else (255, 255, 255)
    for i, line in enumerate(lines):
        draw.text((3, 2 + i * int(size * 1.25)), line, fill=colour, font=font)
    return out


class VideoSink(Sink):
    """Writes every processed frame, annotated, at `fps` frames per second (the sampling
    rate: the review video plays at the source's speed). The first frame fixes the size;
    later frames of another size (a reconnect to another resolution) are resized to it."""

    def __init__(self, path: str | Path, model, fps: float):
        try:
            import av  # the `video` extra
        except ImportError:
            raise SightwiseError("--video-out needs PyAV: pip install 'sightwise[video]'") from None

        self.path, self.model = Path(path), model
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), "w", format="mp4",
                                 options={"movflags": "frag_keyframe+empty_moov",
                                          "flush_packets": "1"})
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=max(1, round(fps)))
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"g": str(GOP), **({"tune": "zerolatency"} if codec == "libx264" else {})}
        self.size: tuple[int, int] | None = None
        self.written = 0
        self.av = av

    def frame(self, p: Processed) -> None:
        img = self.model.frame_overlay(p.image, p.result)
        lines = [f"t={p.record['t']:.2f}s  #{p.record['frame']}", p.result.caption]
        if p.active:
            lines.append("EVENT: " + ", ".join(p.active))
        img = caption(img, lines, bool(p.active))
        if self.size is None:  # yuv420p needs even sides
            self.size = (max(2, img.width // 2 * 2), max(2, img.height // 2 * 2))
            self.stream.width, self.stream.height = self.size
        if img.size != self.size:
            img = img.resize(self.size, Image.Resampling.BILINEAR)
        frame = self.av.VideoFrame.from_image(img)
        frame.pts = self.written
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.written += 1

    def close(self) -> None:
        if self.container is None:
            return
        if self.written:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()
        self.container = None

    def stats(self) -> dict:
        return {"video_frames": self.written}
