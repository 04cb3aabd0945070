"""DICOM de-identification on pydicom's bundled test files.

References: a hand-written list of the attributes PS3.15 Table E.1-1 names for the Basic
Profile (written from the standard, not from our table), a brute-force search of the
output bytes for every original identifying value, pydicom's pixel arrays, and date
arithmetic with `datetime`."""

from __future__ import annotations

import copy
import io
from datetime import date

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from sightwise.privacy.dicom_deid import (  # noqa: E402
    BurnedInAnnotation,
    Deidentifier,
    deidentify_bytes,
    is_standard_uid,
    phi_findings,
    profile_rules,
)

FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "examples_ybr_color.dcm",
         "SC_rgb_rle_2frame.dcm", "MR_small_jp2klossless.dcm"]
# From PS3.15 Table E.1-1, Basic Profile column: keyword -> allowed outcomes.
# "gone": removed; "empty_or_dummy": Z/D; "new_uid": U; "shifted": a date moved (the
# Modified Dates option) or removed/emptied.
STANDARD = {
    "PatientName": "empty_or_dummy", "PatientID": "empty_or_dummy",
    "PatientBirthDate": "empty_or_dummy", "PatientSex": "empty_or_dummy",
    "PatientAge": "gone", "PatientWeight": "gone", "PatientSize": "gone",
    "OtherPatientIDsSequence": "gone", "AdditionalPatientHistory": "gone",
    "InstitutionName": "gone_or_empty_or_dummy", "StationName": "gone_or_empty_or_dummy",
    "ReferringPhysicianName": "empty_or_dummy", "OperatorsName": "gone_or_empty_or_dummy",
    "AccessionNumber": "empty_or_dummy", "StudyID": "empty_or_dummy",
    "DeviceSerialNumber": "gone_or_empty_or_dummy", "StudyDescription": "gone",
    "ImageComments": "gone", "ProtocolName": "gone_or_empty_or_dummy",
    "StudyInstanceUID": "new_uid", "SeriesInstanceUID": "new_uid",
    "SOPInstanceUID": "new_uid", "FrameOfReferenceUID": "new_uid",
    "InstanceCreatorUID": "new_uid", "StudyDate": "shifted", "SeriesDate": "shifted",
    "AcquisitionDate": "shifted", "ContentDate": "shifted",
}


def _path(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


def _read(data: bytes):
    return pydicom.dcmread(io.BytesIO(data))


def _run(name: str, deid: Deidentifier | None = None):
    data = open(_path(name), "rb").read()
    out, changes = deidentify_bytes(data, deid or Deidentifier(key=b"k" * 32))
    return data, out, changes


def _identifying_strings(ds) -> set[str]:
    """Values of the text, name and UID attributes the profile changes (table rows, private
    attributes, person names, instance UIDs), minus values that also sit in an attribute the
    profile keeps (a private tag may repeat Body Part Examined; that is not an identifier)."""
    exact, _ = profile_rules()
    targeted, kept = set(), set()

    def walk(d):
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
                continue
            if elem.VR not in ("PN", "LO", "SH", "LT", "ST", "UT", "UI", "CS") or not elem.value:
                continue
            values = {str(v).strip() for v in (elem.value if elem.VM > 1 else [elem.value])}
            if int(elem.tag) in exact or elem.tag.is_private or elem.VR in ("PN", "UI"):
                targeted.update(v for v in values if len(v) >= 6 and not (
                    elem.VR == "UI" and is_standard_uid(v)))
            else:
                kept.update(values)
    walk(ds)
    return {t for t in targeted if not any(t in k for k in kept)}


@pytest.mark.parametrize("name", FILES)
def test_profile_attributes_are_gone_emptied_replaced_or_shifted(name):
    data, out, _ = _run(name)
    before, after = _read(data), _read(out)
    for keyword, outcome in STANDARD.items():
        if keyword not in before or before.data_element(keyword).value in ("", None):
            continue
        old_value = str(before.data_element(keyword).value)
        new_value = str(after.data_element(keyword).value) if keyword in after else None
        if outcome == "gone":
            assert keyword not in after, keyword
        elif outcome == "new_uid":
            assert new_value and new_value != old_value and new_value.startswith("2.25."), keyword
        elif outcome == "shifted":
            assert new_value != old_value, keyword
        else:
            assert new_value in (None, "", "ANONYMOUS", "ANONYMIZED") or \
                new_value.startswith("ANON-"), (keyword, new_value)
    assert not any(elem.tag.is_private for elem in after.iterall())
    assert after.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in after.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]  # Basic Profile, Modified Dates Option (CID 7050)
    if "SOPInstanceUID" in after:
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID


@pytest.mark.parametrize("name", FILES)
def test_no_original_identifier_survives_anywhere_in_the_output_bytes(name):
    data, out, _ = _run(name)
    leaked = [s for s in _identifying_strings(_read(data)) if s.encode() in out]
    assert leaked == []


@pytest.mark.parametrize("name", FILES)
def test_pixel_data_is_unchanged(name):
    data, out, _ = _run(name)
    before, after = _read(data), _read(out)
    assert before.PixelData == after.PixelData if "PixelData" in before else "PixelData" not in after
    if "PixelData" in before:
        try:
            a = before.pixel_array
        except Exception:
            pytest.skip("no decoder installed for this transfer syntax")
        assert np.array_equal(a, after.pixel_array)


def _series(n: int = 3) -> list[bytes]:
    """n instances of one CT series: own SOP Instance UIDs and dates, shared study."""
    base = pydicom.dcmread(_path("CT_small.dcm"))
    files = []
    for i in range(n):
        ds = copy.deepcopy(base)  # Dataset.copy() shares its elements
        ds.SOPInstanceUID = f"{base.SOPInstanceUID}.{i}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ContentDate = f"1997041{i}"
        ds.PerformedProcedureStepStartDate = f"1997042{i}"  # X in the Basic Profile, C in
        # the Modified Dates option: kept, shifted
        if i:
            ref = pydicom.Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = base.SOPClassUID, \
                f"{base.SOPInstanceUID}.0"
            ds.ReferencedImageSequence = [ref]
        buf = io.BytesIO()
        ds.save_as(buf)
        files.append(buf.getvalue())
    return files


def test_uids_are_replaced_consistently_within_a_study():
    deid = Deidentifier()
    outs = [_read(deidentify_bytes(f, deid)[0]) for f in _series()]
    assert len({o.StudyInstanceUID for o in outs}) == 1
    assert len({o.SeriesInstanceUID for o in outs}) == 1
    assert len({o.SOPInstanceUID for o in outs}) == 3
    for o in outs[1:]:  # references still point at the first instance, under its new UID
        assert o.ReferencedImageSequence[0].ReferencedSOPInstanceUID == outs[0].SOPInstanceUID
        assert o.ReferencedImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    mapping = deid.mapping()["uids"]
    assert mapping[pydicom.dcmread(_path("CT_small.dcm")).StudyInstanceUID] == \
        outs[0].StudyInstanceUID


def _day(text: str) -> date:
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def test_dates_shift_by_one_offset_per_patient_keeping_intervals():
    deid = Deidentifier(key=b"fixed key for a deterministic test")
    files = _series()
    before = [_read(f) for f in files]
    after = [_read(deidentify_bytes(f, deid)[0]) for f in files]
    pairs = list(zip(after, before, strict=True))
    shifts = {(_day(a.ContentDate) - _day(b.ContentDate)).days for a, b in pairs}
    shifts |= {(_day(a.StudyDate) - _day(b.StudyDate)).days for a, b in pairs}
    shifts |= {(_day(a.PerformedProcedureStepStartDate) -
                _day(b.PerformedProcedureStepStartDate)).days for a, b in pairs}
    assert len(shifts) == 1 and -3650 <= shifts.pop() <= -365
    other = _read(deidentify_bytes(open(_path("MR_small.dcm"), "rb").read(), deid)[0])
    mr = pydicom.dcmread(_path("MR_small.dcm"))
    other_shift = (_day(other.StudyDate) - _day(mr.StudyDate)).days
    ct_shift = (_day(after[0].StudyDate) - _day(before[0].StudyDate)).days
    assert other_shift != ct_shift  # another patient, another offset (fixed key)
    assert after[0].PatientID == after[1].PatientID != other.PatientID
    assert after[0].PatientName == after[0].PatientID  # one pseudonym per patient


def test_burned_in_annotation_is_refused_unless_allowed():
    ds = pydicom.dcmread(_path("MR_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    buf = io.BytesIO()
    ds.save_as(buf)
    assert any(f["kind"] == "burned_in" for f in phi_findings(ds))
    with pytest.raises(BurnedInAnnotation):
        deidentify_bytes(buf.getvalue(), Deidentifier())
    out, _ = deidentify_bytes(buf.getvalue(), Deidentifier(), allow_burned_in=True)
    assert _read(out).PatientIdentityRemoved == "YES"


@pytest.mark.parametrize("name", FILES)
def test_check_flags_the_original_and_passes_the_clean_copy(name):
    data, out, changes = _run(name)
    fields = {f.get("field") for f in phi_findings(_read(data))}
    assert "PatientName" in fields and changes
    assert phi_findings(_read(out)) == []


def test_every_table_row_parses_and_repeating_groups_match():
    exact, masked = profile_rules()
    assert len(exact) > 400 and len(masked) == 3
    assert exact[0x00100010].action == "Z" and exact[0x00080020].shift
    from sightwise.privacy.dicom_deid import rule_for

    assert rule_for(0x60223000).keyword == "OverlayData"  # any even 60xx group
    assert rule_for(0x50001234).keyword == "CurveData"
    assert rule_for(0x60213000) is None  # odd group: private, handled by rule


@pytest.mark.parametrize("name", FILES)
def test_every_table_attribute_present_got_its_action(name):
    """Against Table E.1-1 itself: each top-level attribute the table lists and the file
    carries is removed (X), given a new UID (U), shifted (Modified Dates) or emptied or
    replaced (Z, D and the choices between them)."""
    from sightwise.privacy.dicom_deid import rule_for

    data, out, _ = _run(name)
    before, after = _read(data), _read(out)
    checked = 0
    for elem in before:
        rule = rule_for(int(elem.tag))
        if rule is None or elem.tag.is_private or elem.value in ("", None, []):
            continue
        checked += 1
        new = after.get(elem.tag)
        if rule.shift and elem.VR in ("DA", "DT"):
            assert new is not None and new.value != elem.value, rule.keyword
        elif rule.shift and elem.VR == "TM":
            assert new is not None and new.value == elem.value, rule.keyword  # times kept
        elif rule.action == "X":
            assert new is None, rule.keyword
        elif elem.VR == "UI":
            assert str(new.value).startswith("2.25."), rule.keyword
        elif elem.VR == "SQ":
            assert new is not None, rule.keyword  # kept with cleaned or no items
        else:
            assert new is not None and new.value != elem.value or new.value in ("", None), \
                rule.keyword
    assert checked >= 5
