"""`monitor report`: windows of a prediction log tested against a bundle's reference, as the
Contract JSON, a table, an HTML page with a drift plot, and Prometheus gauges.

Contract (other tools rely on it): one JSON object
``{"windows": [{"index", "n", "drift", "alert", "p_value", "estimated_accuracy", ...}, ...],
"alerts": <number of alerts raised>, ...}`` with windows in time order.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from dataclasses import asdict
from pathlib import Path

from sightwise.bundle import Bundle, load_bundle
from sightwise.monitor.alerts import alert_event, post_webhook, queue_items, write_queue_entry
from sightwise.monitor.live import strip
from sightwise.monitor.log import read_records
from sightwise.monitor.reference import load_reference
from sightwise.monitor.windows import DEFAULT_CONFIG, MonitorConfig, analyse

TESTS = ("ks", "chi2", "mmd", "outliers")
P_CAP = 20


def monitor_report(log_dir: str | Path, bundle: Bundle | str | Path, *,
                   config: MonitorConfig = DEFAULT_CONFIG, since: float | None = None,
                   until: float | None = None, queue_dir: str | Path | None = None,
                   webhook: str | None = None, log=print) -> dict:
    """Test every window of the log's records made with this bundle's reference.

    Records projected with another reference (another model version) are skipped and
    counted. With `queue_dir`, each alert writes its labelling-queue folder (once: an
    existing folder is left alone); with `webhook`, each new alert is POSTed.
    """
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    ref = load_reference(b)
    ref_id = ref.meta["id"]
    counts: dict = {"other_reference": 0, "other_records": 0, "records": 0}

    def mine():
        for rec in read_records(log_dir, since=since, until=until, counts=counts):
            if "probs" not in rec:  # not a prediction: e.g. a video event (watch --log)
                counts["other_records"] += 1
            elif rec.get("ref") == ref_id:
                counts["records"] += 1
                yield rec
            else:
                counts["other_reference"] += 1

    windows = analyse(mine(), ref, config, keep_records=bool(queue_dir or webhook))
    queued = _act_on_alerts(windows, ref, b, config, queue_dir, webhook, log_dir, log)
    last = next((w for w in reversed(windows) if w["tested"]), None)
    return {
        "log": str(log_dir), "bundle": str(b.path), "reference": ref_id,
        "classes": b.classes, "config": asdict(config), "n_records": counts.pop("records"),
        "skipped": counts, "reference_accuracy": ref.stats["accuracy"],
        "windows": [strip(w) for w in windows],
        "alerts": sum(bool(w["alert_start"]) for w in windows),
        "alert_windows": sum(bool(w["alert"]) for w in windows),
        "drift_windows": sum(bool(w["drift"]) for w in windows),
        "alert_now": bool(last and last["alert"]),
        "queued": [str(q) for q in queued],
    }


def _act_on_alerts(windows, ref, bundle, config, queue_dir, webhook, log_dir, log):
    if queue_dir is None and webhook is None:
        return []
    model = bundle.path.parent.name if bundle.path.name == "bundle" else bundle.path.name
    queued = []
    for i, w in enumerate(windows):
        if not w["alert"]:
            continue
        drifted = [x for x in windows[max(0, i - config.alert_of + 1):i + 1] if x["drift"]]
        recs = [r for x in drifted for r in x.get("records", [])]
        version = recs[-1].get("version") if recs else None
        event = alert_event(w, drifted, model=model, version=version, ref_id=ref.meta["id"],
                            classes=bundle.classes)
        if queue_dir is not None:
            where = {r.get("sha256"): x["index"] for x in drifted for r in x.get("records", [])}
            path = write_queue_entry(queue_dir, event, queue_items(recs, where, bundle.classes,
                                                                   ref), log_dir)
            if path is not None:
                queued.append(path)
                log(f"queued {path}")
        if webhook and w["alert_start"]:
            post_webhook(webhook, event)
    return queued


def monitor_summary(log_dir: str | Path, bundle: Bundle | str | Path, *,
                    config: MonitorConfig = DEFAULT_CONFIG, hours: float = 24.0,
                    last: int = 50, log_status: dict | None = None) -> dict:
    """GET /v1/monitor's answer from the log on disk: the last `last` windows of the records
    of the past `hours` (windows counted from the first such record) and the gauges."""
    report = monitor_report(log_dir, bundle, config=config, since=time.time() - hours * 3600,
                            log=lambda _m: None)
    report["windows"] = report["windows"][-last:]
    report["gauges"] = prometheus_gauges(report, log_status)
    return report


# -- surfaces -------------------------------------------------------------------------------


def prometheus_gauges(summary: dict, log_status: dict | None = None) -> dict[str, float]:
    """Flat {metric name: value} of the last tested window and the log (NaN when unknown):
    p-values per test and family, estimated accuracy per method, drift and alert state,
    alerts raised, log lag, pending and dropped records."""
    nan = float("nan")
    w = next((x for x in reversed(summary.get("windows", [])) if x.get("tested")), None) or {}
    p = w.get("p_values") or {}
    acc = w.get("accuracy") or {}
    g = {"sightwise_monitor_p_value": _num(w.get("p_value")),
         **{f"sightwise_monitor_{t}_p_value": _num(p.get(t)) for t in TESTS},
         "sightwise_monitor_estimated_accuracy_atc": _num((acc.get("atc") or {}).get("estimate")),
         "sightwise_monitor_estimated_accuracy_confidence":
             _num((acc.get("confidence") or {}).get("estimate")),
         "sightwise_monitor_outlier_share": _num(w.get("outlier_share")),
         "sightwise_monitor_drift": float(bool(w.get("drift"))) if w else nan,
         "sightwise_monitor_alert": float(bool(w.get("alert"))) if w else nan,
         "sightwise_monitor_alerts_total": float(summary.get("alerts", 0)),
         "sightwise_monitor_window_end_timestamp_seconds": _num(w.get("end"))}
    s = log_status or {}
    g["sightwise_monitor_log_lag_seconds"] = _num(s.get("lag_s"))
    g["sightwise_monitor_log_pending"] = _num(s.get("pending"))
    g["sightwise_monitor_log_dropped_total"] = _num(s.get("dropped"))
    g["sightwise_monitor_log_healthy"] = float(bool(s.get("healthy"))) if s else nan
    return g


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def report_table(report: dict) -> str:
    """A fixed-width table, one line per window, and a summary line."""
    head = (f"{'win':>4} {'start (UTC)':<19} {'n':>5} {'family p':>9} {'ks':>7} {'chi2':>7} "
            f"{'mmd':>7} {'outl':>7} {'acc ATC':>13} {'acc conf':>13}  flags")
    lines = [head, "-" * len(head)]
    for w in report["windows"]:
        start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(w["start"]))
        if not w["tested"]:
            lines.append(f"{w['index']:>4} {start:<19} {w['n']:>5}  (not tested: "
                         f"{'open' if not w['complete'] else 'too few predictions'})")
            continue
        p, a = w["p_values"], w["accuracy"]
        flags = " ".join(f for f, on in (("DRIFT", w["drift"]), ("ALERT", w["alert"])) if on)
        lines.append(f"{w['index']:>4} {start:<19} {w['n']:>5} {_p(w['p_value']):>9} "
                     f"{_p(p['ks']):>7} {_p(p['chi2']):>7} {_p(p['mmd']):>7} "
                     f"{_p(p['outliers']):>7} {_acc(a['atc']):>13} {_acc(a['confidence']):>13}"
                     f"  {flags}")
    lines.append(f"{report['n_records']} predictions, {len(report['windows'])} windows, "
                 f"{report['drift_windows']} drifted, {report['alerts']} alert(s); "
                 f"reference accuracy {report['reference_accuracy']:.3f}")
    return "\n".join(lines)


def _p(x) -> str:
    return "-" if x is None else f"{x:.1e}" if x < 0.001 else f"{x:.3f}"


def _acc(a: dict) -> str:
    se = a.get("se")
    return f"{a['estimate']:.3f}" + ("" if se is None else f"±{se:.3f}")


def drift_plot_png(summary: dict, *, dpi: int = 110) -> bytes:
    """Two panels over window index: -log10 family p (alpha line, alerts shaded) and the
    label-free accuracy estimates with +-2 standard errors (and `true_accuracy`, one value
    per window, when the summary has it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ws = [w for w in summary.get("windows", []) if w.get("tested")]
    alpha = summary.get("config", {}).get("alpha", 0.01)
    fig = Figure(figsize=(8, 5), dpi=dpi)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    x = [w["index"] for w in ws]
    # -log10 p, capped: a p of 1e-200 and one of 1e-30 mean the same thing here.
    ax1.plot(x, [min(P_CAP, -math.log10(max(w["p_value"], 1e-300))) for w in ws], "o-", ms=3,
             color="C0", label="family-wise p")
    ax1.axhline(-math.log10(alpha), color="C3", ls="--", lw=1, label=f"alpha = {alpha:g}")
    for w in ws:
        if w["alert"]:
            ax1.axvspan(w["index"] - 0.5, w["index"] + 0.5, color="C3", alpha=0.15, lw=0)
    ax1.set_ylabel(f"-log10 p (capped at {P_CAP})")
    ax1.set_ylim(0, P_CAP * 1.05)
    ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title("Drift per window (shaded: alert)", fontsize=10)
    for key, colour, label in (("atc", "C2", "ATC"), ("confidence", "C1", "confidence")):
        est = [w["accuracy"][key]["estimate"] for w in ws]
        se = [w["accuracy"][key]["se"] or 0.0 for w in ws]
        ax2.plot(x, est, "o-", ms=3, color=colour, label=label)
        ax2.fill_between(x, [e - 2 * s for e, s in zip(est, se, strict=True)],
                         [e + 2 * s for e, s in zip(est, se, strict=True)], color=colour,
                         alpha=0.15, lw=0)
    if summary.get("true_accuracy"):  # when labels exist (benchmarks): one value per window
        ax2.plot(x, [summary["true_accuracy"][i] for i in x], "s--", ms=3, color="k", lw=1,
                 label="true accuracy")
    if summary.get("reference_accuracy") is not None:
        ax2.axhline(summary["reference_accuracy"], color="grey", ls=":", lw=1,
                    label="reference accuracy")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("estimated accuracy")
    ax2.set_xlabel("window")
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def report_html(report: dict) -> str:
    png = base64.b64encode(drift_plot_png(report)).decode("ascii")
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Sightwise monitor report"
        "</title><style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
        "pre{font-size:12px;overflow-x:auto}</style>"
        f"<h1>Monitor report</h1><p>Log <code>{html.escape(report['log'])}</code>, bundle "
        f"<code>{html.escape(report['bundle'])}</code> (reference {report['reference']}); "
        f"window {report['config']['window']}, alpha {report['config']['alpha']:g}; "
        f"<b>{report['alerts']} alert(s)</b>, {report['drift_windows']} drifted window(s) of "
        f"{len(report['windows'])}.</p>"
        f"<img alt='drift over time' src='data:image/png;base64,{png}'>"
        f"<pre>{html.escape(report_table(report))}</pre></html>\n")
