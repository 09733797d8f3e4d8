"""`moat bench` monitor section: the drift scenario on real data through the real server.

The newest version under `model_base_path` (with its reference profile) is served by moat-model-server with
request logging at sampling 1.0; REST clients replay the MR test sentences (in-domain, never trained on), then
`amazon` product-review and `nyt` editorial snippets (polarity by the sign of the human score). Everything below
is computed from what the server logged:
- accuracy and mean confidence per domain (the size of the problem);
- per detector: false alarms on ≥ 50 resampled in-domain windows, delay after an abrupt shift to amazon / nyt,
  and where a gradual mix (10 % → 50 % amazon) is first flagged;
- label-free estimated vs realised accuracy (feedback labels joined by text hash) per window;
- REST throughput at 16 clients with logging off vs logging 1.0 + `moat monitor follow` running.
"""
from __future__ import annotations

import dataclasses
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from moatkit.app.loadgen import rest_client, run_load
from moatkit.data.core.errors import ConfigError
from moatkit.serving.monitoring.config import MonitorConfig
from moatkit.serving.monitoring.logs import LogReader
from moatkit.serving.monitoring.monitor import VersionMonitor
from moatkit.serving.process import ServerProcess

DOMAINS = ("mr", "amazon", "nyt")


@dataclasses.dataclass
class MonitorBench:
    model_base_path: str = "artifacts/models/sentiment"
    model_name: str = "sentiment"
    per_domain: int = 2000  # texts replayed per domain (MR test has 2,114)
    clients: int = 4  # replay clients (order is kept per domain: one queue, texts in order)
    false_alarm_windows: int = 60
    gradual_texts: int = 2000
    overhead_clients: int = 16
    overhead_seconds: float = 8.0
    overhead_rounds: int = 2
    seed: int = 0


def _config_text(base: Path, prefix: Path | None) -> str:
    logging = (f'logging_config {{ log_collector_config {{ type: "file" filename_prefix: "{prefix}" }} '
               f'sampling_config {{ sampling_rate: 1.0 }} }}') if prefix else ""
    return (f'model_config_list {{ config {{ name: "{base.name}" base_path: "{base.resolve()}" '
            f'model_platform: "tensorflow" {logging} }} }}')


def _domain_rows(name: str, limit: int, seed: int) -> list[dict]:
    from moatkit.data.dataset import read_records
    from moatkit.data.fetch import fetch
    from moatkit.data.split import SplitConfig, ensure_splits

    if name == "mr":  # the held-out test split of the fine-tune's default split
        records = read_records(ensure_splits("mr", SplitConfig(stratify_field="label")) / "test")
    else:
        records = read_records(fetch(name))
    records = [r for r in records if str(r.get("text", "")).strip() and r.get("label") is not None]
    order = np.random.default_rng(seed).permutation(len(records))[:limit]
    return [records[i] for i in order]


def _replay(address: str, model: str, texts: list[str], clients: int) -> None:
    import http.client

    work: queue.Queue = queue.Queue()
    for text in texts:
        work.put(text)
    errors: list[str] = []

    def client():
        host, port = address.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            try:
                text = work.get_nowait()
            except queue.Empty:
                return
            connection.request("POST", f"/v1/models/{model}:predict", body=json.dumps({"instances": [text]}),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                errors.append(f"HTTP {response.status}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} replay requests failed: {errors[0]}")


def run_monitor_bench(bench: MonitorBench, out_dir: Path, *, log=print) -> dict:
    base = Path(bench.model_base_path)
    versions = sorted(int(p.name) for p in base.glob("*") if p.name.isdigit())
    if not versions or not (base / str(versions[-1]) / "assets.extra" / "moat_profile.json").is_file():
        raise ConfigError(f"'{base}' has no version with a monitoring profile",
                          fix="run `moat demo` (or `moat export`) first; older versions: `moat monitor profile`")
    version_dir = base / str(versions[-1])
    work = Path(tempfile.mkdtemp(prefix="moat-monitor-bench-"))
    rows = {d: _domain_rows(d, bench.per_domain, bench.seed) for d in DOMAINS}
    config_file = work / "models.config"
    config_file.write_text(_config_text(base, work / "logs" / bench.model_name))
    log(f"      replaying {sum(map(len, rows.values()))} texts ({', '.join(DOMAINS)}) through REST with logging 1.0")
    with ServerProcess(model_config_file=config_file) as server:
        for domain in DOMAINS:
            _replay(server.rest_address, bench.model_name, [r["text"] for r in rows[domain]], bench.clients)
    reader = LogReader([str(work / "logs")], model=bench.model_name)
    logged = reader.poll(final=True)
    expected = sum(map(len, rows.values()))
    if len(logged) != expected:
        raise RuntimeError(f"the server logged {len(logged)} texts of {expected} sent")
    feedback = work / "feedback.jsonl"
    feedback.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n"
                                for d in DOMAINS for r in rows[d]))
    config = MonitorConfig(model=bench.model_name, repo=str(base.parent), feedback=str(feedback), seed=bench.seed)
    cache: dict = {}
    monitor = VersionMonitor(config, versions[-1], version_dir, str(feedback), embedding_cache=cache)
    by_domain, start = {}, 0
    for domain in DOMAINS:
        by_domain[domain] = logged[start:start + len(rows[domain])]
        start += len(rows[domain])
    result = {"version_dir": str(version_dir), "texts": {d: len(v) for d, v in by_domain.items()},
              "log_records": dict(reader.counts)}
    result["domains"] = _domain_accuracy(monitor, by_domain)
    log("      accuracy through REST: " + ", ".join(f"{d} {v['accuracy']:.3f} (confidence {v['mean_confidence']:.3f})"
                                                    for d, v in result["domains"].items()))
    result["detectors"] = _detector_table(bench, config, version_dir, versions[-1], by_domain, cache, log=log)
    result["estimates"] = _estimates(config, version_dir, versions[-1], by_domain, str(feedback), cache)
    result["overhead"] = _overhead(bench, base, work, log=log)
    result["streams"] = str(_export_streams(out_dir / "monitor_streams", monitor, by_domain, rows, cache))
    (out_dir / "monitor.json").write_text(json.dumps(result, indent=2))
    (out_dir / "monitor.md").write_text(markdown(result))
    return result


def _export_streams(out: Path, monitor: VersionMonitor, by_domain: dict, rows: dict, cache: dict) -> Path:
    """The logged streams (and the profile's dev split) as arrays for app/bench_monitor_reference.py, which runs
    Evidently and alibi-detect in their own venv (`make bench-monitor-reference`)."""
    from moatkit.data.dataset import read_records

    out.mkdir(parents=True, exist_ok=True)
    dev = [r for r in read_records(monitor.profile["source"]) if str(r.get("text", "")).strip()]
    streams = {"dev": ([r["text"] for r in dev], [r["label"] for r in dev], None)}
    for domain, texts in by_domain.items():
        streams[domain] = ([t.text for t in texts], [r["label"] for r in rows[domain]],
                           np.stack([t.probabilities for t in texts]))
    for key, (texts, labels, probabilities) in streams.items():
        if probabilities is None:
            probabilities = monitor.model.probabilities(texts)
        missing = sorted(set(texts) - cache.keys())
        if missing:
            cache.update(zip(missing, monitor.model.embeddings(missing)))
        np.save(out / f"{key}_probs.npy", probabilities)
        np.save(out / f"{key}_emb.npy", np.stack([cache[t] for t in texts]))
        (out / f"{key}_rows.json").write_text(json.dumps([[t, y] for t, y in zip(texts, labels)]))
    return out


def _domain_accuracy(monitor: VersionMonitor, by_domain: dict) -> dict:
    out = {}
    for domain, texts in by_domain.items():
        probabilities = np.stack([t.probabilities for t in texts])
        truth = [monitor.feedback.label_of(t.text) for t in texts]
        predicted = [monitor.labels[i] for i in probabilities.argmax(1)]
        out[domain] = {"accuracy": float(np.mean([p == y for p, y in zip(predicted, truth)])),
                       "mean_confidence": float(probabilities.max(1).mean()), "texts": len(texts)}
    return out


def _fresh(config, version_dir, version, cache, **changes):
    return VersionMonitor(dataclasses.replace(config, **changes), version, version_dir, None, embedding_cache=cache)


def _first_alarm(monitor: VersionMonitor, texts, shift_at: int) -> tuple[int | None, int, dict]:
    """Feeds texts; returns (texts after the shift until the first window alarming, pre-shift alarms, per-test
    delays at level alpha each)."""
    monitor.add(texts)
    before = sum(w["confirmed_alarm"] for w in monitor.windows if w["end"] <= shift_at)
    delay, per_test = None, {}
    for window in monitor.windows:
        if window["end"] <= shift_at:
            continue
        if delay is None and window["confirmed_alarm"]:
            delay = window["end"] - shift_at
        for name, test in window["tests"].items():
            if name not in per_test and test["p_value"] < monitor.config.alpha:
                per_test[name] = window["end"] - shift_at
    return delay, before, per_test


def _detector_table(bench, config, version_dir, version, by_domain, cache, *, log) -> dict:
    rng = np.random.default_rng(bench.seed)
    mr = by_domain["mr"]
    monitor = _fresh(config, version_dir, version, cache)
    alarms, per_test = 0, {}
    for _ in range(bench.false_alarm_windows):
        picked = [mr[i] for i in rng.choice(len(mr), config.window, replace=False)]
        result = monitor.evaluate_texts(picked)
        alarms += result["alarm"]
        for name, test in result["tests"].items():
            per_test[name] = per_test.get(name, 0) + (test["p_value"] < config.alpha)
    table = {"false_alarm_rate": {"combined": alarms / bench.false_alarm_windows,
                                  **{k: v / bench.false_alarm_windows for k, v in per_test.items()}},
             "false_alarm_windows": bench.false_alarm_windows}
    for shifted in ("amazon", "nyt"):
        stream = mr[:600] + by_domain[shifted][:600]
        delay, before, tests = _first_alarm(_fresh(config, version_dir, version, cache), stream, 600)
        table[f"delay_{shifted}"] = {"combined": delay, **tests}
        table[f"pre_shift_alarms_{shifted}"] = before
    table["gradual"] = _gradual(bench, config, version_dir, version, by_domain, cache)
    log(f"      drift: false alarms {table['false_alarm_rate']['combined']:.3f} per window; delay amazon "
        f"{table['delay_amazon']['combined']}, nyt {table['delay_nyt']['combined']} texts; gradual mix flagged at "
        f"{table['gradual']['flagged_at_share']}")
    return table


def _gradual(bench, config, version_dir, version, by_domain, cache) -> dict:
    rng = np.random.default_rng(bench.seed + 1)
    mr, amazon = list(by_domain["mr"]), list(by_domain["amazon"])
    stream, shares, i_mr, i_am = [], [], 0, 0
    for i in range(bench.gradual_texts):
        share = 0.1 + 0.4 * i / bench.gradual_texts
        if rng.random() < share:
            stream.append(amazon[i_am % len(amazon)])
            i_am += 1
        else:
            stream.append(mr[i_mr % len(mr)])
            i_mr += 1
        shares.append(share)
    monitor = _fresh(config, version_dir, version, cache)
    monitor.add(stream)
    first = next((w for w in monitor.windows if w["confirmed_alarm"]), None)
    return {"texts": bench.gradual_texts, "flagged_at_text": first["end"] if first else None,
            "flagged_at_share": round(shares[first["end"] - 1], 3) if first else None}


def _estimates(config, version_dir, version, by_domain, feedback, cache) -> dict:
    out = {}
    for domain, texts in by_domain.items():
        monitor = VersionMonitor(config, version, version_dir, feedback, embedding_cache=cache)
        monitor.add(texts)
        windows = [w for w in monitor.windows if "estimate" in w and w["realised"]["accuracy"] is not None]
        estimated = np.array([w["estimate"]["estimated_accuracy"] for w in windows])
        realised = np.array([w["realised"]["accuracy"] for w in windows])
        out[domain] = {"windows": len(windows), "mean_estimated": float(estimated.mean()),
                       "mean_realised": float(realised.mean()),
                       "mean_abs_error": float(np.abs(estimated - realised).mean()),
                       "mean_cbpe": float(np.mean([w["estimate"]["cbpe"] for w in windows])),
                       "mean_confidence": float(np.mean([w["estimate"]["mean_confidence"] for w in windows]))}
    return out


def _overhead(bench, base: Path, work: Path, *, log) -> dict:
    """REST throughput at `overhead_clients`, logging off vs logging 1.0 + `moat monitor follow`, in alternating
    rounds (off, on, off, on) so a drift in the machine's load hits both modes alike."""
    rounds: dict[str, list[dict]] = {"logging off": [], "logging 1.0 + follow": []}
    for round_index in range(bench.overhead_rounds):
        for mode in rounds:
            rounds[mode].append(_throughput(bench, base, work / f"overhead-{round_index}", logging=mode != "logging off"))
    results = {mode: {"req_per_s": [r["req_per_s"] for r in runs], "errors": sum(r["errors"] for r in runs),
                      "p50_ms": [r["p50_ms"] for r in runs]} for mode, runs in rounds.items()}
    off, on = (sum(results[m]["req_per_s"]) / len(results[m]["req_per_s"]) for m in rounds)
    results["throughput_cost"] = round(1 - on / off, 3) if off else None
    log(f"      REST at {bench.overhead_clients} clients: {off:.1f} req/s without logging, {on:.1f} with logging 1.0 + "
        f"follow ({results['throughput_cost']:.1%} cost; mean of {bench.overhead_rounds} alternating rounds)")
    return results


def _throughput(bench, base: Path, work: Path, *, logging: bool) -> dict:
    prefix = work / "logs" / bench.model_name if logging else None
    work.mkdir(parents=True, exist_ok=True)
    config_file = work / f"{'on' if logging else 'off'}.config"
    config_file.write_text(_config_text(base, prefix))
    follower = None
    with ServerProcess(model_config_file=config_file) as server:
        if prefix is not None:
            follower = subprocess.Popen(
                [sys.executable, "-m", "moatkit.app.cli", "monitor", "follow", "--set", f"model={bench.model_name}",
                 "--set", f"repo={base.parent}", "--set", f"logs=[{prefix.parent}]", "--set", "metrics_port=0",
                 "--set", "embedding_sample=0.25", "--set", f"out={work / 'follow'}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(5.0)  # the follower has loaded its model before the window starts
        load = run_load(rest_client(server.rest_address, bench.model_name, ["a wonderful, moving film"]),
                        clients=bench.overhead_clients, seconds=bench.overhead_seconds).summary()
        if follower is not None:
            follower.terminate()
            follower.wait(timeout=30)
    return load


def markdown(result: dict) -> str:
    lines = ["| domain | texts | accuracy (REST) | mean confidence | estimated (ATC) | realised | abs error |",
             "|---|---|---|---|---|---|---|"]
    for domain, d in result["domains"].items():
        e = result["estimates"][domain]
        lines.append(f"| {domain} | {d['texts']} | {d['accuracy']:.3f} | {d['mean_confidence']:.3f} | "
                     f"{e['mean_estimated']:.3f} | {e['mean_realised']:.3f} | {e['mean_abs_error']:.3f} |")
    det = result["detectors"]
    lines += ["", "| detector | false alarms / window | delay amazon | delay nyt |", "|---|---|---|---|"]
    for name in det["false_alarm_rate"]:
        lines.append(f"| {name} | {det['false_alarm_rate'][name]:.3f} | {det['delay_amazon'].get(name)} | "
                     f"{det['delay_nyt'].get(name)} |")
    lines.append(f"\nGradual mix: first alarm at {det['gradual']['flagged_at_share']} shifted share.")
    o = result["overhead"]
    lines.append(f"REST throughput cost of logging 1.0 + follow at 16 clients: {o['throughput_cost']:.1%} "
                 f"(req/s off {o['logging off']['req_per_s']}, on {o['logging 1.0 + follow']['req_per_s']}).")
    return "\n".join(lines) + "\n"
