"""sightwise.privacy: DICOM input and de-identification, metadata scrubbing, face blurring,
audit log. Torch-free: face detection imports torch and facenet-pytorch only when used, and
pydicom (the `dicom` extra) only when a DICOM file is met.

The pieces other packages wire in:
- `strip_metadata(image_bytes) -> bytes`: a kept upload without EXIF/GPS/XMP/IPTC;
- `scrub_bytes(data, faces=, detector=, deidentifier=) -> (bytes, info)`: the same for any
  upload, DICOM de-identified and faces blurred on request;
- `blur_faces(image) -> image`: faces blurred (or boxed);
- `AuditLog(path).append(action, client=, token=, model_version=, image_sha256=, result=)`
  and `verify_audit(path)`: the hash-chained audit trail;
- `require_clean(dataset_path)`: DataError when `privacy check` flags any file.
"""

from sightwise.privacy.audit import AuditLog, token_id, verify_audit
from sightwise.privacy.check import check_dataset, require_clean
from sightwise.privacy.faces import FaceDetector, blur_faces, faces_available
from sightwise.privacy.scrub import scrub_bytes, scrub_dataset
from sightwise.privacy.strip import strip_metadata

__all__ = ["AuditLog", "FaceDetector", "blur_faces", "check_dataset", "faces_available",
           "require_clean", "scrub_bytes", "scrub_dataset", "strip_metadata", "token_id", "verify_audit"]
