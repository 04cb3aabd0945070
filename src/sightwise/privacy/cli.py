"""Command-line entry points of sightwise.privacy, added to the main `sightwise` app by
`register(app)`. Imports only typer at module level; heavy imports happen inside commands.

    sightwise privacy check DATA [--json] [--html out.html] [--faces/--no-faces]
    sightwise privacy scrub DATA --out CLEAN [--blur-faces|--box-faces] [--dicom-profile basic]
                            [--mapping-out FILE] [--allow-burned-in] [--audit-log LOG]
    sightwise privacy verify-audit LOG [--expect-seq N --expect-hash H] [--json]
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from sightwise.cli_errors import user_errors

privacy_app = typer.Typer(no_args_is_help=True, add_completion=False,
                          help="Personal data in images: check, scrub (EXIF/GPS, DICOM PHI, "
                          "faces), verify an audit log. Tooling, not legal advice.")

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


@privacy_app.command()
@user_errors
def check(
    data: Annotated[str, typer.Argument(help="Folder (recursive) or one file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    html: Annotated[str | None, typer.Option("--html", help="Also write an HTML report.")] = None,
    faces: Annotated[bool | None, typer.Option("--faces/--no-faces", help="Look for faces "
                     "(default: when torch and facenet-pytorch are installed).")] = None,
    quiet: Quiet = False,
) -> None:
    """Report, per file, the personal data it carries: EXIF/GPS/XMP/IPTC, DICOM PHI tags,
    burned-in annotation flags, faces. Exit code 1 when anything is found."""
    from sightwise.core import atomic_write_text
    from sightwise.privacy.check import check_dataset, report_html

    report = check_dataset(data, faces=faces, progress=not quiet and not as_json)
    if html:
        atomic_write_text(html, report_html(report))
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print_check(report)
    if report["summary"]["flagged"]:
        raise typer.Exit(1)


def _print_check(report: dict) -> None:
    s = report["summary"]
    typer.echo(f"{s['files']} file(s): {s['flagged']} with personal data, {s['clean']} clean, "
               f"{s['errors']} unreadable")
    for kind, n in s["files_by_kind"].items():
        typer.echo(f"  {kind:<10} {n:>6} file(s)   e.g. {', '.join(s['examples'][kind][:3])}")
    for e in report["errors"][:10]:
        typer.echo(f"  unreadable: {e['path']}: {e['error']}")
    if not report["faces_checked"]:
        typer.echo(f"  {report['faces_note']}")


@privacy_app.command()
@user_errors
def scrub(
    data: Annotated[str, typer.Argument(help="Folder (recursive) or one file.")],
    out: Annotated[str, typer.Option("--out", help="New or empty folder for the clean copy.")],
    blur_faces: Annotated[bool, typer.Option("--blur-faces", help="Blur faces found.")] = False,
    box_faces: Annotated[bool, typer.Option("--box-faces", help="Fill faces black.")] = False,
    dicom_profile: Annotated[str, typer.Option("--dicom-profile", help="PS3.15 profile: "
                             "basic.")] = "basic",
    mapping_out: Annotated[str | None, typer.Option("--mapping-out", help="Write the "
                           "re-identification mapping (UIDs, pseudonyms, date shifts) here; "
                           "keep it apart from the data.")] = None,
    allow_burned_in: Annotated[bool, typer.Option("--allow-burned-in", help="Copy DICOM files "
                               "flagged as burned-in annotation too.")] = False,
    audit_log: Annotated[str | None, typer.Option("--audit-log", help="Audit log to append to "
                         "(default CLEAN/.sightwise/audit.jsonl).")] = None,
    quiet: Quiet = False,
) -> None:
    """Write a clean copy (same relative paths): metadata stripped, DICOM de-identified,
    faces blurred on request. The source is never modified."""
    from sightwise.privacy.scrub import scrub_dataset

    if blur_faces and box_faces:
        raise ValueError("choose one of --blur-faces and --box-faces")
    faces = "blur" if blur_faces else "box" if box_faces else None
    s = scrub_dataset(data, out, faces=faces, dicom_profile=dicom_profile,
                      mapping_out=mapping_out, allow_burned_in=allow_burned_in,
                      audit_log=audit_log, progress=not quiet)
    typer.echo(f"wrote {s['written']} file(s) to {s['out']}: {s['lossless']} stripped without "
               f"re-encoding, {len(s['re_encoded'])} re-encoded, {s['dicom']} DICOM de-identified"
               + (f", {s['faces_found']} face(s) {faces.replace('blur', 'blurr')}ed" if faces else ""))
    for rel in s["burned_in"][:10]:
        _err(f"not copied (burned-in annotation; --allow-burned-in to copy): {rel}")
    for e in s["errors"][:10]:
        _err(f"not copied (unreadable): {e['path']}: {e['error']}")
    if s["not_copied"]:
        _err(f"not copied: {len(s['not_copied'])} file(s) that are not images, e.g. "
             f"{', '.join(s['not_copied'][:3])}")
    typer.echo(f"audit log: {s['audit_log']} (head seq {s['audit_head']['seq']})")


@privacy_app.command("verify-audit")
@user_errors
def verify_audit_cmd(
    log: Annotated[str, typer.Argument(help="Audit log (JSON Lines).")],
    expect_seq: Annotated[int | None, typer.Option("--expect-seq", help="Last seq recorded "
                          "elsewhere: detects lines cut from the end.")] = None,
    expect_hash: Annotated[str | None, typer.Option("--expect-hash", help="sha256 of the last "
                           "line recorded elsewhere.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check an audit log's hash chain; name each edited, deleted, inserted or moved line.
    Exit code 1 when the log was tampered with."""
    from sightwise.privacy.audit import verify_audit

    expect = None
    if expect_seq is not None or expect_hash is not None:
        expect = {"seq": expect_seq, "line_sha256": expect_hash}
    report = verify_audit(log, expect_head=expect)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    elif report.ok:
        typer.echo(f"ok: {report.records} record(s), chain intact; head seq "
                   f"{report.head['seq']} line sha256 {report.head['line_sha256']}")
    else:
        typer.echo(f"TAMPERED: {len(report.problems)} problem(s) in {report.records} record(s)")
        for p in report.problems:
            typer.echo(f"  {p}")
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this package's commands to the main app."""
    app.add_typer(privacy_app, name="privacy", help="Personal data in images: check, scrub "
                  "(EXIF/GPS, DICOM PHI, faces), verify-audit.")
