"""Step 3 of `moat iterate`: the offline gate, in the terms of TFX's Evaluator.

Both SavedModels (the served version and the candidate, as exported: tokenizer in the graph) are run on the same
golden slices. The candidate is blessed when every check passes:
- value thresholds: slice accuracy >= min_accuracy[slice] (TFMA's GenericValueThreshold lower_bound);
- change thresholds: no slice below the current version by more than max_drop, and the target slice above it by
  at least min_gain (TFMA's GenericChangeThreshold, absolute, higher is better);
- budgets: p50 latency of a one-text request and the version's size on disk.
Written as blessing.json and blessing.md (a table per slice).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from moatkit.data.core.errors import ConfigError, DataError


def read_slice(name: str, path: str, labels: list[str]) -> tuple[list[str], list[str]]:
    from moatkit.data.dataset import read_records

    if not (Path(path) / "manifest.json").is_file():
        raise ConfigError(f"golden slice {name!r}: '{path}' is not a dataset dir (no manifest.json)",
                          fix=f"set golden.{name} to a dataset dir with text and label fields")
    records = [r for r in read_records(path) if r.get("text")]
    if not records:
        raise DataError(f"golden slice {name!r} ('{path}') has no records", fix="use a non-empty held-out set")
    stray = sorted({str(r.get("label")) for r in records} - set(labels))
    if stray:
        raise DataError(f"golden slice {name!r} ('{path}') has labels outside {labels}: {stray[:5]}",
                        fix="label it with the model's classes (records without a label cannot be scored)")
    return [r["text"] for r in records], [r["label"] for r in records]


def slice_metrics(model, slices: dict[str, tuple[list[str], list[str]]], labels: list[str]) -> dict:
    result = {}
    for name, (texts, truth) in slices.items():
        predicted = np.asarray(labels)[model.probabilities(texts).argmax(1)]
        correct = int((predicted == np.asarray(truth)).sum())
        result[name] = {"examples": len(texts), "correct": correct, "accuracy": correct / len(texts)}
    return result


def latency_ms(model, text: str, *, repeats: int = 30) -> float:
    import tensorflow as tf

    function = model.signatures["serving_default"]
    batch = tf.constant([text])
    function(text=batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(text=batch)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def megabytes(version_dir: Path) -> float:
    return sum(p.stat().st_size for p in Path(version_dir).rglob("*") if p.is_file()) / 1e6


def offline_gate(current_dir: Path, candidate_dir: Path, golden: dict[str, str], labels: list[str], config,
                 out: Path) -> dict:
    from moatkit.models.export import source_of
    from moatkit.serving.monitoring.model_runner import VersionModel

    named = ({config.target_slice} if config.target_slice else set()) | set(config.min_accuracy)
    if named - set(golden):
        raise ConfigError(f"target_slice / min_accuracy name slices that are not golden: {sorted(named - set(golden))}"
                          f" (the golden slices are {sorted(golden)})", fix="add them: --set golden.NAME=DIR")
    theirs = source_of(candidate_dir).get("labels")
    if theirs != labels:
        raise ConfigError(f"the candidate's classes {theirs} are not the served version's {labels}",
                          fix="train the candidate on the same labels, in the same order")
    slices = {name: read_slice(name, path, labels) for name, path in golden.items()}
    models = {"current": VersionModel(current_dir), "candidate": VersionModel(candidate_dir)}
    metrics = {side: slice_metrics(model, slices, labels) for side, model in models.items()}
    probe = next(iter(slices.values()))[0][0]
    budgets = {side: {"latency_ms": latency_ms(model, probe), "megabytes": megabytes(model.version_dir)}
               for side, model in models.items()}
    checks = []

    def check(kind: str, subject: str, value: float, threshold: float, passed: bool):
        checks.append({"check": kind, "slice": subject, "value": round(value, 4), "threshold": round(threshold, 4),
                       "passed": bool(passed)})

    for name in slices:
        ours, theirs = metrics["candidate"][name]["accuracy"], metrics["current"][name]["accuracy"]
        if name in config.min_accuracy:
            check("value_threshold", name, ours, config.min_accuracy[name], ours >= config.min_accuracy[name])
        check("change_threshold", name, ours - theirs, -config.max_drop, ours - theirs >= -config.max_drop)
        if name == config.target_slice:
            check("target_gain", name, ours - theirs, config.min_gain, ours - theirs >= config.min_gain)
    check("latency_ms", "all", budgets["candidate"]["latency_ms"], config.max_latency_ms,
          budgets["candidate"]["latency_ms"] <= config.max_latency_ms)
    check("megabytes", "all", budgets["candidate"]["megabytes"], config.max_megabytes,
          budgets["candidate"]["megabytes"] <= config.max_megabytes)
    blessing = {"blessed": all(c["passed"] for c in checks), "checks": checks, "slices": metrics,
                "budgets": budgets, "current": str(current_dir), "candidate": str(candidate_dir)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "blessing.json").write_text(json.dumps(blessing, indent=2))
    (out / "blessing.md").write_text(blessing_markdown(blessing))
    return blessing


def blessing_markdown(blessing: dict) -> str:
    lines = [f"# Offline gate: {'BLESSED' if blessing['blessed'] else 'REFUSED'}", "",
             "| slice | examples | current | candidate | change |", "|---|---:|---:|---:|---:|"]
    for name, current in blessing["slices"]["current"].items():
        candidate = blessing["slices"]["candidate"][name]
        lines.append(f"| {name} | {current['examples']} | {current['accuracy']:.4f} | {candidate['accuracy']:.4f} | "
                     f"{candidate['accuracy'] - current['accuracy']:+.4f} |")
    lines += ["", "| check | slice | value | threshold | passed |", "|---|---|---:|---:|---|"]
    lines += [f"| {c['check']} | {c['slice']} | {c['value']} | {c['threshold']} | {'yes' if c['passed'] else 'NO'} |"
              for c in blessing["checks"]]
    return "\n".join(lines) + "\n"
