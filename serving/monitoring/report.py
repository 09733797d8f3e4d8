"""`moat monitor report`: the whole log once → report.json and a self-contained report.html (plots inline)."""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import numpy as np

from moatkit.serving.monitoring.config import MonitorConfig
from moatkit.serving.monitoring.logs import files_summary
from moatkit.serving.monitoring.monitor import Monitor, VersionMonitor


def run_report(config: MonitorConfig, *, log=print) -> dict:
    started = time.time()
    monitor = Monitor(config)
    monitor.poll(final=True)
    report = summarise(monitor)
    report["seconds"] = round(time.time() - started, 2)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_plain))
    (out / "report.html").write_text(render_html(report, monitor))
    for line in headline(report):
        log(line)
    log(f"report: {out / 'report.json'} and {out / 'report.html'}")
    return report


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def summarise(monitor: Monitor) -> dict:
    counts = dict(monitor.reader.counts)
    texts_seen = counts.get("texts", 0)
    monitored = sum(v.total for v in monitor.versions.values())
    report = {"model": monitor.config.model, "config": {k: v for k, v in vars(monitor.config).items()},
              "files": files_summary(monitor.reader), "log_records": counts,
              "texts": {"logged": texts_seen, "monitored": monitored,
                        "skipped_unmonitored_versions": {str(k): v for k, v in monitor.skipped_texts.items()}},
              "unmonitored_versions": {str(k): v for k, v in monitor.unmonitored.items()},
              "versions": {str(v): _version_summary(m, monitor.config.ood_texts)
                           for v, m in sorted(monitor.versions.items())}}
    if not monitor.reader.files:
        report["warnings"] = [f"no log files matched {monitor.config.logs}"]
    return report


def _version_summary(monitor: VersionMonitor, ood_count: int) -> dict:
    windows = monitor.windows
    alarms = [w for w in windows if w["confirmed_alarm"]]
    summary = {"texts": monitor.total, "windows": len(windows), "alarms": len(alarms),
               "first_alarm": None, "reference": {"texts": monitor.profile["texts"],
                                                  "calibration": monitor.profile.get("calibration")},
               "window_results": [_compact(w) for w in windows],
               "ood_texts": monitor.ood_texts(ood_count)}
    if not windows:
        summary["note"] = (f"{len(monitor.rows)} texts: fewer than one window ({monitor.config.window}); "
                           "nothing was tested")
    if alarms:
        first = alarms[0]
        summary["first_alarm"] = {"window": first["index"], "after_texts": first["end"],
                                  "time": first["end_time"], "detectors": first["drifted"]}
    if monitor.feedback is not None:
        summary["feedback"] = dict(monitor.feedback.counts)
        if monitor.feedback.unknown_labels:
            summary["feedback"]["unknown_labels"] = sorted(monitor.feedback.unknown_labels)[:20]
    return summary


def _compact(window: dict) -> dict:
    out = {k: window[k] for k in ("index", "end", "n", "start_time", "end_time", "alarm", "confirmed_alarm",
                                  "drifted", "level")}
    out["p_values"] = {name: t["p_value"] for name, t in window["tests"].items()}
    out["effects"] = {name: {k: v for k, v in t.items() if k not in ("p_value", "n")}
                      for name, t in window["tests"].items()}
    for key in ("estimate", "realised"):
        if key in window:
            out[key] = window[key]
    return out


def headline(report: dict) -> list[str]:
    lines = [f"{report['texts']['logged']} logged texts of model {report['model']} "
             f"({report['log_records'].get('records', 0)} records; skipped: "
             f"{ {k: v for k, v in report['log_records'].items() if k.startswith(('skipped', 'truncated', 'corrupt'))} })"]
    for version, reason in report["unmonitored_versions"].items():
        lines.append(f"version {version} not monitored: {reason}")
    for version, summary in report["versions"].items():
        first = summary["first_alarm"]
        alarm = (f"first alarm after {first['after_texts']} texts ({', '.join(first['detectors'])})"
                 if first else "no alarm")
        lines.append(f"version {version}: {summary['texts']} texts, {summary['windows']} windows, "
                     f"{summary['alarms']} alarms; {alarm}")
    return lines


# === HTML ===

def _figure_png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(figure)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _plots(monitor: VersionMonitor) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = monitor.windows
    ends = [w["end"] for w in windows]
    images = []
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for name in sorted({n for w in windows for n in w["tests"]}):
        ax.plot(ends, [max(w["tests"].get(name, {}).get("p_value", np.nan), 1e-12) for w in windows], label=name)
    ax.axhline(windows[0]["level"], color="k", ls="--", lw=1, label="alarm level")
    for w in windows:
        if w["confirmed_alarm"]:
            ax.axvspan(w["end"] - monitor.config.step, w["end"], color="red", alpha=0.08)
    ax.set(yscale="log", xlabel="logged texts", ylabel="p-value", title="drift tests per window")
    ax.legend(fontsize=7, ncol=2)
    images.append(_figure_png(fig))
    if any("estimate" in w for w in windows):
        fig, ax = plt.subplots(figsize=(9, 3.0))
        est = [w["estimate"]["estimated_accuracy"] if "estimate" in w else np.nan for w in windows]
        low = [w["estimate"]["interval"][0] if "estimate" in w else np.nan for w in windows]
        high = [w["estimate"]["interval"][1] if "estimate" in w else np.nan for w in windows]
        ax.plot(ends, est, label="estimated (label-free)")
        ax.fill_between(ends, low, high, alpha=0.2)
        realised = [w.get("realised", {}).get("accuracy") for w in windows]
        if any(r is not None for r in realised):
            ax.plot(ends, [np.nan if r is None else r for r in realised], label="realised (feedback)")
        ax.set(xlabel="logged texts", ylabel="accuracy", title="accuracy per window")
        ax.legend(fontsize=8)
        images.append(_figure_png(fig))
    last = windows[-1]["tests"]
    names = monitor.evaluator.features.bin_names()
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
    current = monitor.evaluator.features.histograms(monitor.evaluator.features.features(
        [r.text.text for r in monitor.rows[-monitor.config.window:]]))
    for ax, name in zip(axes, ("length", "oov", "language", "garbage")):
        ref = np.asarray(monitor.evaluator.reference_histograms[name], float)
        cur = np.asarray(current[name], float)
        x = np.arange(len(ref))
        ax.bar(x - 0.2, ref / max(ref.sum(), 1), 0.4, label="reference")
        ax.bar(x + 0.2, cur / max(cur.sum(), 1), 0.4, label="last window")
        ax.set_xticks(x, names[name], rotation=60, fontsize=6)
        ax.set_title(f"{name} (p={last[f'input_{name}']['p_value']:.2g})", fontsize=9)
    axes[0].legend(fontsize=7)
    images.append(_figure_png(fig))
    return images


def render_html(report: dict, monitor: Monitor) -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>moat monitor: {html.escape(report['model'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 8px;"
             "text-align:left}table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}</style>",
             f"<h1>Model {html.escape(report['model'])}</h1>",
             "<p>" + "<br>".join(html.escape(line) for line in headline(report)) + "</p>"]
    for version, vm in sorted(monitor.versions.items()):
        parts.append(f"<h2>Version {version}</h2>")
        if not vm.windows:
            parts.append(f"<p>{html.escape(report['versions'][str(version)].get('note', ''))}</p>")
            continue
        parts.extend(_plots(vm))
        parts.append("<h3>Most out-of-distribution texts</h3><table><tr><th>distance</th><th>text</th></tr>")
        parts.extend(f"<tr><td>{t['distance']}</td><td>{html.escape(t['text'])}</td></tr>"
                     for t in vm.ood_texts(monitor.config.ood_texts))
        parts.append("</table>")
    parts.append("<h2>Log records</h2><table>")
    parts.extend(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in report["log_records"].items())
    parts.append("</table>")
    return "\n".join(parts)
