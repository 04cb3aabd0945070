"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile
with the Retain Longitudinal Temporal Information with Modified Dates Option.

What each attribute gets is Table E.1-1 (`dicom_profile.TABLE_E1_1`); where the standard
lets the de-identifier choose (X/Z, X/D, ...), we keep the attribute and empty it or give it
a dummy value, which is valid for every attribute type. Beyond the table, stricter rules:
every private attribute is removed, every UID that is not a registered standard UID (SOP
classes, transfer syntaxes) is replaced, every date is shifted and every person name emptied.

Consistency, so the clean copy is still a data set (PS3.15 E.3.9, E.3.6):
- a UID gets the same replacement in every file of the run (so studies and series hold
  together), derived from a random per-run key: `2.25.<128-bit hash of key and UID>`;
- each patient (by Patient ID, else name) gets one pseudonym and one date shift (1 to 10
  years back, whole days), so intervals between a patient's studies are kept exactly;
- Patient Name and Patient ID both become the pseudonym (Z allows a dummy value), so a
  patient-level train/test split is still possible on the clean copy.

Pixel data is never touched (the Clean Pixel Data option is not implemented): files that
say they carry burned-in annotation (0028,0301) = YES are refused unless allowed.
pydicom is imported only by the functions that need it (the optional `dicom` extra).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import re
import secrets
from dataclasses import dataclass, field
from datetime import date, timedelta

from sightwise.privacy.dicom_profile import TABLE_E1_1

METHOD = "PS3.15 E.1 Basic Profile; Modified Dates Option (sightwise)"
CODES = (("113100", "Basic Application Confidentiality Profile"),
         ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
PSEUDONYM_TAGS = (0x00100010, 0x00100020)  # Patient's Name, Patient ID
DUMMY = {"PN": "ANONYMOUS", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED",
         "ST": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED",
         "AE": "ANONYMOUS", "DA": "19000101", "DT": "19000101000000", "TM": "000000",
         "IS": "0", "DS": "0", "AS": "000Y"}
NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})


@dataclass(frozen=True)
class Rule:
    action: str      # the standard's code: X, Z, D, U, X/Z, X/D, X/Z/D, Z/D, X/Z/U*
    shift: bool      # dates modified under the Modified Dates option
    keyword: str


class BurnedInAnnotation(Exception):
    """The file says its pixels carry burned-in text (names, dates) the profile cannot remove."""


@functools.cache
def profile_rules() -> tuple[dict[int, Rule], tuple[tuple[int, int, Rule], ...]]:
    """(exact tag -> rule, ((mask, value, rule), ...) for repeating groups like 60xx,3000)."""
    exact, masked = {}, []
    for line in TABLE_E1_1.splitlines():
        if not line.strip():
            continue
        tag, action, shift, keyword = line.split(None, 3)
        rule = Rule(action, shift == "C", keyword)
        hexdigits = tag.replace(",", "")
        if "X" in hexdigits:
            mask = int("".join("0" if c == "X" else "F" for c in hexdigits), 16)
            masked.append((mask, int(hexdigits.replace("X", "0"), 16), rule))
        else:
            exact[int(hexdigits, 16)] = rule
    return exact, tuple(masked)


def rule_for(tag: int) -> Rule | None:
    """The profile's rule for a (public) tag, or None when the table does not list it.

    >>> rule_for(0x00100010).action, rule_for(0x60023000).keyword, rule_for(0x00280010)
    ('Z', 'OverlayData', None)
    """
    exact, masked = profile_rules()
    if tag in exact:
        return exact[tag]
    for mask, value, rule in masked:
        if tag & mask == value and (tag >> 16) % 2 == 0:
            return rule
    return None


def is_standard_uid(uid: str) -> bool:
    """A UID the standard registers (SOP class, transfer syntax, coding scheme...): not PHI."""
    from pydicom.uid import UID_dictionary

    return str(uid) in UID_dictionary


@dataclass
class Change:
    """One attribute the profile changed: for reports and the benchmark's tag table."""

    path: str        # keyword path, e.g. "OtherPatientIDsSequence[0].PatientID"
    tag: str         # "(0010,0010)"
    action: str      # removed | emptied | dummy | pseudonym | uid | shifted
    before: str
    after: str


@dataclass
class Patient:
    pseudonym: str
    shift_days: int


@dataclass
class Deidentifier:
    """One de-identification run: the key, and the UID and patient maps it built.

    Use one instance for all files of a data set, so a study keeps its UIDs across files.
    """

    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    uids: dict[str, str] = field(default_factory=dict)
    patients: dict[str, Patient] = field(default_factory=dict)

    def _hash(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def new_uid(self, old: str) -> str:
        old = str(old).strip().rstrip("\0")
        if old not in self.uids:
            n = int.from_bytes(self._hash("uid", old)[:16], "big")
            self.uids[old] = f"2.25.{n}"
        return self.uids[old]

    def patient(self, ds) -> Patient:
        ident = str(ds.get("PatientID") or ds.get("PatientName") or
                    ds.get("StudyInstanceUID") or "unknown")
        if ident not in self.patients:
            h = self._hash("patient", ident)
            shift = 365 + int.from_bytes(h[:4], "big") % (9 * 365 + 1)
            self.patients[ident] = Patient(f"ANON-{h[4:9].hex().upper()}", shift)
        return self.patients[ident]

    def mapping(self) -> dict:
        """Everything needed to re-identify: write it only on request, never beside the data."""
        return {"method": METHOD, "key": self.key.hex(), "uids": dict(self.uids),
                "patients": {k: {"pseudonym": p.pseudonym, "date_shift_days": -p.shift_days}
                             for k, p in self.patients.items()}}

    # -- one dataset -----------------------------------------------------------------

    def deidentify(self, ds, *, allow_burned_in: bool = False) -> list[Change]:
        """De-identify a pydicom Dataset in place; returns what changed. Pixels untouched."""
        if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES" and not allow_burned_in:
            raise BurnedInAnnotation("Burned In Annotation (0028,0301) is YES: the pixels "
                                     "carry text the profile cannot remove")
        patient = self.patient(ds)
        changes: list[Change] = []
        self._clean(ds, patient, changes, "")
        self._clean_meta(ds, changes)
        _mark(ds)
        return changes

    def _clean(self, ds, patient: Patient, changes: list[Change], prefix: str) -> None:
        for tag in list(ds.keys()):
            elem = ds[tag]
            path = f"{prefix}{elem.keyword or _tag_str(tag)}"
            if tag.is_private:
                _record(changes, path, elem, "removed", "")
                del ds[tag]
                continue
            rule = rule_for(int(tag))
            if rule is None:
                self._generic(ds, elem, patient, changes, path)
            else:
                self._apply(ds, elem, rule, patient, changes, path)

    def _apply(self, ds, elem, rule: Rule, patient, changes, path) -> None:
        vr, action = elem.VR, rule.action
        if vr == "SQ" and action in ("U", "D", "X/D", "X/Z/U*"):
            self._recurse(elem, patient, changes, path)  # keep the structure, clean the items
        elif rule.shift and vr in ("DA", "DT"):  # the Modified Dates option keeps, shifted
            _shift_element(elem, -patient.shift_days, changes, path)
        elif rule.shift and vr == "TM":
            return  # times of day carry no identity once the dates moved (Modified Dates)
        elif action == "X":
            _record(changes, path, elem, "removed", "")
            del ds[elem.tag]
        elif vr == "UI" and "U" in action:
            self._replace_uids(elem, changes, path)
        elif int(elem.tag) in PSEUDONYM_TAGS:
            _set(changes, path, elem, "pseudonym", patient.pseudonym)
        elif action in ("D", "X/D"):
            _set(changes, path, elem, "dummy", _dummy(elem, self))
        else:  # Z, X/Z, X/Z/D, Z/D: keep the attribute, empty
            _set(changes, path, elem, "emptied", [] if vr == "SQ" else None)

    def _generic(self, ds, elem, patient, changes, path) -> None:
        vr = elem.VR
        if vr == "SQ":
            self._recurse(elem, patient, changes, path)
        elif vr == "UI" and elem.value and not all(is_standard_uid(u) for u in _values(elem)):
            self._replace_uids(elem, changes, path)
        elif vr in ("DA", "DT") and elem.value:
            _shift_element(elem, -patient.shift_days, changes, path)
        elif vr == "PN" and elem.value:
            _set(changes, path, elem, "emptied", None)

    def _recurse(self, elem, patient, changes, path) -> None:
        for i, item in enumerate(elem.value or []):
            self._clean(item, patient, changes, f"{path}[{i}].")

    def _replace_uids(self, elem, changes, path) -> None:
        new = [u if is_standard_uid(u) else self.new_uid(u) for u in _values(elem)]
        _set(changes, path, elem, "uid", new if elem.VM > 1 else (new[0] if new else None))

    def _clean_meta(self, ds, changes: list[Change]) -> None:
        import pydicom

        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        for tag in (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102):
            if tag in meta:  # AE titles and private information of the sending system
                _record(changes, meta[tag].keyword, meta[tag], "removed", "")
                del meta[tag]
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "SIGHTWISE"


# -- files ---------------------------------------------------------------------------------


def deidentify_bytes(data: bytes, deid: Deidentifier, *, name: str | None = None,
                     allow_burned_in: bool = False) -> tuple[bytes, list[Change]]:
    """A de-identified copy of a DICOM file's bytes (same transfer syntax, same pixel bytes)."""
    from sightwise.data.dicom import check_complete, read_dataset

    ds = read_dataset(data, name=name)
    check_complete(ds)  # a cut file would make a cut clean copy: refuse it instead
    changes = deid.deidentify(ds, allow_burned_in=allow_burned_in)
    _ensure_meta(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), changes


def _ensure_meta(ds) -> None:
    """Files read without a Part 10 header get one, so the copy is a proper DICOM file."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = getattr(ds, "original_encoding", (True, True))[0]
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    if "MediaStorageSOPClassUID" not in meta and "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "MediaStorageSOPInstanceUID" not in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta


def _mark(ds) -> None:
    """PS3.15 E.1.1: say the instance was de-identified, and how (codes from CID 7050)."""
    from pydicom.dataset import Dataset

    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    items = []
    for value, meaning in CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    ds.LongitudinalTemporalInformationModified = "MODIFIED"


# -- values --------------------------------------------------------------------------------

_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})")
_RANGE = re.compile(r"^(\d{8})?-(\d{8})?$")  # DA ranges, as queries write them


def shift_date_text(value: str, days: int) -> str:
    """Shift the YYYYMMDD at the start of a DA or DT value by `days`; '' if it has none.

    Times and time-zone suffixes of a DT are kept; a DA range "A-B" shifts both ends.
    A value too vague to shift (a year alone) or unparseable is emptied.

    >>> shift_date_text("20040119", -10), shift_date_text("20040101120000.5+0100", -1)
    ('20040109', '20031231120000.5+0100')
    >>> shift_date_text("2004", -1), shift_date_text("20040101-20040131", 1)
    ('', '20040102-20040201')
    """
    value = value.strip()
    if _RANGE.match(value) and value != "-":
        return "-".join(shift_date_text(part, days) if part else "" for part in value.split("-"))
    m = _DATE.match(value)
    if m is None:
        return ""
    try:
        d = date(int(m[1]), int(m[2]), int(m[3])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return f"{d.year:04d}{d.month:02d}{d.day:02d}" + value[8:]


def _shift_element(elem, days: int, changes, path) -> None:
    old = _values(elem)
    if not old:
        return
    values = [shift_date_text(str(v), days) for v in old]
    _set(changes, path, elem, "shifted", values if len(values) > 1 else values[0])


def _dummy(elem, deid: Deidentifier):
    vr = elem.VR
    if vr == "UI":
        return deid.new_uid(str(elem.value or "empty"))
    if vr in NUMERIC_VRS:
        return 0
    return DUMMY.get(vr, None)


def _values(elem) -> list:
    value = elem.value
    if value is None or value == "":
        return []
    return list(value) if elem.VM > 1 else [value]


def _set(changes, path, elem, action: str, new) -> None:
    before = _text(elem.value)
    if before == "" and action != "pseudonym":
        return  # nothing there to protect (an empty type 2 attribute)
    elem.value = new
    changes.append(Change(path, _tag_str(elem.tag), action, before, _text(elem.value)))


def _record(changes, path, elem, action: str, after: str) -> None:
    changes.append(Change(path, _tag_str(elem.tag), action, _text(elem.value), after))


def _text(value) -> str:
    if value is None or (type(value).__name__ == "Sequence" and len(value) == 0):
        return ""
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if type(value).__name__ == "Sequence" or isinstance(value, list) and value and \
            type(value[0]).__name__ == "Dataset":
        return f"<sequence of {len(value)} item(s)>"
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _tag_str(tag) -> str:
    t = int(tag)
    return f"({t >> 16:04X},{t & 0xFFFF:04X})"


# -- findings (privacy check) --------------------------------------------------------------


def phi_findings(ds) -> list[dict]:
    """What the profile would remove or replace in this dataset, as `privacy check` findings.

    A file marked de-identified (Patient Identity Removed = YES) keeps pseudonyms, new UIDs,
    shifted dates and dummy values by design; in it we flag only what should be gone:
    attributes the profile removes (X), person names, and private attributes.
    """
    deidentified = str(ds.get("PatientIdentityRemoved", "")).strip().upper() == "YES"
    found: list[dict] = []
    private: list[str] = []
    _walk_phi(ds, "", found, private, deidentified)
    if private:
        found.append({"kind": "dicom_phi", "tag": "private", "field": "private attributes",
                      "count": len(private), "value": ", ".join(private[:4])})
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        found.append({"kind": "burned_in", "tag": "(0028,0301)", "field": "BurnedInAnnotation",
                      "value": "YES"})
    return found


def _walk_phi(ds, prefix: str, found: list[dict], private: list[str], deidentified: bool) -> None:
    for tag in ds.keys():
        elem = ds[tag]
        if tag.is_private:
            private.append(_tag_str(tag))
            continue
        path = f"{prefix}{elem.keyword or _tag_str(tag)}"
        rule = rule_for(int(tag))
        if elem.VR == "SQ":
            if rule is not None and rule.action == "X" and elem.value:
                found.append(_phi(path, elem, rule.action))
            else:
                for i, item in enumerate(elem.value or []):
                    _walk_phi(item, f"{path}[{i}].", found, private, deidentified)
            continue
        if not _values(elem) or (deidentified and not _flag_after_deid(elem, rule)):
            continue
        if rule is not None:
            found.append(_phi(path, elem, rule.action))
        elif elem.VR == "PN" or elem.VR in ("DA", "DT") or (
                elem.VR == "UI" and not all(is_standard_uid(u) for u in _values(elem))):
            found.append(_phi(path, elem, "beyond table"))


def _flag_after_deid(elem, rule: Rule | None) -> bool:
    if elem.VR == "PN":
        return int(elem.tag) not in PSEUDONYM_TAGS
    return (rule is not None and rule.action == "X"
            and not (rule.shift and elem.VR in ("DA", "DT", "TM")))


def _phi(path: str, elem, action: str) -> dict:
    text = _text(elem.value)
    return {"kind": "dicom_phi", "tag": _tag_str(elem.tag), "field": path, "action": action,
            "value": text if len(text) <= 80 else text[:79] + "…"}
