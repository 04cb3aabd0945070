"""The prediction log and the live drift monitor inside the server (#18), wired through the
prediction observers (observers.py): nothing of it runs on the request path.

`build_monitoring(settings, name)` makes, for `serve --log DIR` (on by default, under
`$SIGHTWISE_HOME/logs/<name>`), a `MonitorLog` (sightwise.monitor.live: the durable log,
each version's reference, the windows, the labelling queue and the webhook) and the
observer that feeds it one record per predicted image. With `--keep-images` the upload's
bytes come along in the event and are cleaned here, in the observer's thread, before the
log writes them: metadata stripped (EXIF/GPS/XMP/IPTC), DICOM de-identified (basic
profile), and with `--blur-faces` faces blurred (sightwise.privacy.scrub_bytes). An
image that cannot be cleaned is not kept; its record still is.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from sightwise.errors import ImageDecodeError, SightwiseError
from sightwise.monitor.live import MonitorLog, default_log_dir
from sightwise.monitor.windows import MonitorConfig
from sightwise.serve.logs import RateLimitedLog
from sightwise.serve.observers import PredictionEvent
from sightwise.serve.settings import ServeSettings

log = logging.getLogger("sightwise.serve")


class ImageCleaner:
    """What `--keep-images` writes instead of the upload: `clean(data) -> bytes | None`."""

    def __init__(self, blur_faces: bool = False):
        from sightwise.privacy.dicom_deid import Deidentifier

        self.detector = None
        if blur_faces:  # fail at start-up, not at the first kept image
            from sightwise.privacy.faces import INSTALL_HINT, FaceDetector, faces_available

            if not faces_available():
                raise SightwiseError(f"--blur-faces: {INSTALL_HINT}")
            self.detector = FaceDetector(threads=1)  # one thread: the server's cores serve
        self.deidentifier = Deidentifier()  # one per server: a study's UIDs stay consistent
        self.counts: Counter[str] = Counter()
        self._warn = RateLimitedLog(log.warning)

    def clean(self, data: bytes) -> bytes | None:
        from sightwise.privacy.scrub import scrub_bytes

        try:
            clean, info = scrub_bytes(data, faces="blur" if self.detector else None,
                                      detector=self.detector, deidentifier=self.deidentifier)
        except (ImageDecodeError, ValueError) as exc:  # damaged metadata, burned-in DICOM
            self.counts["not_kept"] += 1
            self._warn.warning("not_kept", "an upload was not kept (its record was): %s", exc)
            return None
        self.counts["kept"] += 1
        self.counts["faces_blurred"] += int(info.get("faces", 0))
        return clean


class PredictionLogObserver:
    """One prediction-log record per predicted image (and the cleaned image with
    --keep-images)."""

    name = "prediction_log"
    wants_embedding = True  # the PCA projection and outlier score of the drift tests

    def __init__(self, mlog: MonitorLog, cleaner: ImageCleaner | None = None):
        self.mlog, self.cleaner = mlog, cleaner
        self.wants_image_bytes = cleaner is not None

    def __call__(self, event: PredictionEvent) -> None:
        image = None
        if self.cleaner is not None and event.image_bytes is not None:
            image = self.cleaner.clean(event.image_bytes)
        emb = None if event.embedding is None else np.asarray(event.embedding)[None, :]
        self.mlog.observe(bundle=event.bundle_path, model=event.model, version=event.version,
                          probs=np.asarray(event.probabilities)[None, :], embeddings=emb,
                          sha256s=[event.image_sha256], latencies_ms=[event.latency_s * 1000],
                          images=[image] if image is not None else None)


class Monitoring:
    """What the server holds for --log: the MonitorLog, its observer, and the answers of
    GET /v1/monitor, /v1/monitor/plot.png and the /metrics gauges."""

    def __init__(self, mlog: MonitorLog, observer: PredictionLogObserver):
        self.mlog, self.observer = mlog, observer

    def summary(self, last: int = 50) -> dict:
        out = self.mlog.summary(last)
        out["gauges"] = self.mlog.gauges()
        if self.observer.cleaner is not None:
            out["images"] = dict(self.observer.cleaner.counts)
        return out

    def plot_png(self, last: int = 50, dpi: int = 110) -> bytes:
        from sightwise.monitor.report import drift_plot_png

        return drift_plot_png(self.mlog.summary(last), dpi=dpi)

    def close(self, timeout: float = 10.0) -> None:
        self.mlog.close(timeout)


def build_monitoring(settings: ServeSettings, name: str) -> Monitoring | None:
    """The prediction log and live monitor for `settings`, or None with --no-log."""
    if not settings.log:
        return None
    directory = Path(settings.log_dir) if settings.log_dir else default_log_dir(name)
    cleaner = ImageCleaner(settings.blur_faces) if settings.keep_images else None
    window = settings.monitor_window
    mlog = MonitorLog(directory, keep_images=settings.keep_images, retain_s=settings.retain_s,
                      max_bytes=settings.log_max_bytes,
                      config=MonitorConfig(window=window, min_n=min(20, window)),
                      queue_dir=settings.queue_dir, webhook=settings.alert_webhook)
    status = mlog.log.status()
    if not status["healthy"]:  # serve anyway: a broken log never stops predictions
        log.warning("the prediction log is not writable; predictions are served and counted "
                    "as dropped: %s", status["last_error"])
    else:
        log.info("logging predictions to %s%s", directory,
                 " (images kept, metadata stripped)" if settings.keep_images else "")
    return Monitoring(mlog, PredictionLogObserver(mlog, cleaner))
