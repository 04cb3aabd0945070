"""What personal data an ordinary image file carries besides its pixels.

Read with Pillow, which parses EXIF (with its GPS and Exif sub-IFDs), XMP, IPTC, PNG text
chunks and JPEG comments for JPEG, PNG, TIFF and WebP. Each finding is a small dict with
a `kind` from the `privacy check` contract ("gps" or "exif"; XMP, IPTC, PNG text and
comments are reported as kind "exif" with their `source`), the `field` and a short `value`.

Not every tag is personal: exposure time or colour space are not, and a scrubbed file keeps
its Orientation on purpose. The lists below are the fields that identify a person, a
place, a device or a moment (PS3.15-style thinking applied to photos), which is what
`train --require-clean` refuses.
"""

from __future__ import annotations

import io
import re

from PIL import ExifTags, Image, IptcImagePlugin

# IFD0 (also the TIFF tags themselves) and the Exif sub-IFD: who, which device, when.
PERSONAL_TAGS = {
    0x010D: "DocumentName", 0x010E: "ImageDescription", 0x013B: "Artist",
    0x013C: "HostComputer", 0x8298: "Copyright", 0x0132: "DateTime",
    0x9003: "DateTimeOriginal", 0x9004: "DateTimeDigitized", 0x9286: "UserComment",
    0x927C: "MakerNote", 0xA420: "ImageUniqueID", 0xA430: "CameraOwnerName",
    0xA431: "BodySerialNumber", 0xA435: "LensSerialNumber", 0x9C9B: "XPTitle",
    0x9C9C: "XPComment", 0x9C9D: "XPAuthor", 0x9C9E: "XPKeywords", 0x9C9F: "XPSubject",
}
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
# IPTC-IIM record 2 datasets that name people, places, dates or carry free text.
IPTC_FIELDS = {(2, 5): "ObjectName", (2, 25): "Keywords", (2, 55): "DateCreated",
               (2, 80): "By-line", (2, 85): "By-lineTitle", (2, 90): "City",
               (2, 92): "Sub-location", (2, 95): "Province-State", (2, 101): "Country",
               (2, 116): "CopyrightNotice", (2, 118): "Contact", (2, 120): "Caption-Abstract",
               (2, 122): "Writer-Editor"}
# XMP properties worth naming in a report (the whole packet is removed by scrub anyway).
XMP_PERSONAL = re.compile(rb"(GPS(?:Latitude|Longitude|Altitude)|creator|rights|City|Country|"
                          rb"State|Location|CreateDate|DateTimeOriginal|SerialNumber|"
                          rb"OwnerName|PersonInImage|Regions|Artist|Credit)\b")
VALUE_CHARS = 80


def image_findings(data: bytes) -> list[dict]:
    """Findings for one image file's bytes; [] for a file without personal metadata.

    Raises the exceptions of `PIL.Image.open` for non-images (the caller reports them).
    """
    with Image.open(io.BytesIO(data)) as im:
        exif = im.getexif()
        found = _exif_findings(exif)
        raw = im.info.get("exif")
        if raw and len(exif) == 0:  # an EXIF block Pillow cannot parse may still name someone
            found.append({"kind": "exif", "source": "exif", "field": "EXIF",
                          "value": f"{len(raw)} bytes Pillow cannot parse"})
        found += _xmp_findings(im.info.get("xmp") or im.info.get("XML:com.adobe.xmp"))
        found += _iptc_findings(im)
        found += _text_findings(im)
    return found


def _exif_findings(exif: Image.Exif) -> list[dict]:
    found = []
    ifds = [exif]
    if EXIF_IFD in exif:
        ifds.append(exif.get_ifd(EXIF_IFD))
    for ifd in ifds:
        for tag, name in PERSONAL_TAGS.items():
            value = ifd.get(tag)
            if value not in (None, "", b""):
                found.append(_finding("exif", "exif", name, value))
    gps = exif.get_ifd(GPS_IFD) if GPS_IFD in exif else {}
    if gps:
        found.append(_gps_finding(gps))
    return found


def _gps_finding(gps: dict) -> dict:
    lat = _degrees(gps.get(2), gps.get(1))
    lon = _degrees(gps.get(4), gps.get(3))
    fields = sorted(ExifTags.GPSTAGS.get(k, str(k)) for k in gps)
    finding = {"kind": "gps", "source": "exif", "field": "GPSInfo",
               "value": f"{lat:.6f}, {lon:.6f}" if lat is not None and lon is not None
               else ", ".join(fields)[:VALUE_CHARS]}
    if lat is not None and lon is not None:
        finding["lat"], finding["lon"] = round(lat, 6), round(lon, 6)
    return finding


def _degrees(dms, ref) -> float | None:
    """EXIF (degrees, minutes, seconds) rationals and N/S/E/W -> signed decimal degrees.

    >>> round(_degrees((48.0, 51.0, 30.0), "N"), 4), _degrees((2, 17, 40), "W") < 0
    (48.8583, True)
    """
    try:
        d, m, s = (float(x) for x in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = d + m / 60.0 + s / 3600.0
    return -value if str(ref).strip().upper() in ("S", "W") else value


def _xmp_findings(xmp) -> list[dict]:
    if not xmp:
        return []
    raw = xmp.encode("utf-8", "replace") if isinstance(xmp, str) else bytes(xmp)
    names = sorted({m.decode() for m in XMP_PERSONAL.findall(raw)})
    found = [{"kind": "exif", "source": "xmp", "field": "XMP",
              "value": (", ".join(names) or f"{len(raw)} bytes")[:VALUE_CHARS]}]
    if any(n.startswith("GPS") for n in names):
        found.append({"kind": "gps", "source": "xmp", "field": "GPS", "value": "in XMP"})
    return found


def _iptc_findings(im: Image.Image) -> list[dict]:
    try:
        info = IptcImagePlugin.getiptcinfo(im) or {}
    except Exception:  # a damaged IPTC block is still metadata, just unreadable
        return [{"kind": "exif", "source": "iptc", "field": "IPTC", "value": "unreadable"}]
    found = []
    for key, name in IPTC_FIELDS.items():
        if key in info:
            found.append(_finding("exif", "iptc", name, info[key]))
    if info and not found:
        found.append({"kind": "exif", "source": "iptc", "field": "IPTC",
                      "value": f"{len(info)} dataset(s)"})
    return found


def _text_findings(im: Image.Image) -> list[dict]:
    found = []
    if im.format == "PNG":
        for key, value in (getattr(im, "text", None) or {}).items():
            if key != "XML:com.adobe.xmp":
                found.append(_finding("exif", "png-text", key, value))
    comment = im.info.get("comment")
    if comment:
        found.append(_finding("exif", "comment", "Comment", comment))
    return found


def _finding(kind: str, source: str, field: str, value) -> dict:
    return {"kind": kind, "source": source, "field": field, "value": _short(value)}


def _short(value) -> str:
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace").strip("\x00 ")
        if not text.isprintable():
            return f"<{len(value)} bytes>"
    elif isinstance(value, list | tuple):
        text = ", ".join(_short(v) for v in value)
    else:
        text = str(value)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"
