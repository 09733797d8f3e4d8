"""The live gate of `moat iterate`: the canary's logged answers against the stable version's, over one window.

Signals, all from what the server logged while the canary took its share (no extra traffic but the probes):
- agreement: the stable version (run here on the canary's own texts) gives the same class;
- confidence: the canary's mean top-class probability against the stable version's answers in the window;
- class shift: the largest change in the share of a predicted class, canary vs stable on the same texts;
- errors and latency: `probes` REST requests to each label; any error fails, and the p50 ratio has a budget.
A candidate that answers one class whatever it is asked fails on agreement and class shift.
"""
from __future__ import annotations

import time

import numpy as np

from moatkit.serving.monitoring.logs import LogReader


def collect(reader: LogReader, *, versions: tuple[int, int], needed: int, timeout: float, log) -> dict:
    """Polls the logs until the canary (versions[1]) answered `needed` texts or `timeout` passed."""
    rows = {v: [] for v in versions}
    deadline, last_note = time.monotonic() + timeout, 0.0
    while True:
        for row in reader.poll():
            if row.version in rows and row.probabilities is not None:
                rows[row.version].append(row)
        if len(rows[versions[1]]) >= needed or time.monotonic() > deadline:
            break
        if time.monotonic() - last_note > 10:
            log(f"live window: {len(rows[versions[1]])}/{needed} canary answers, {len(rows[versions[0]])} stable")
            last_note = time.monotonic()
        time.sleep(0.5)
    return rows


def probe(rest: str, model: str, label: str, text: str, count: int) -> dict:
    from moatkit.serving.client import rest_predict

    times, errors = [], []
    for _ in range(count):
        started = time.perf_counter()
        try:
            rest_predict(rest, model, [text], label=label, timeout=30)
        except Exception as err:  # noqa: BLE001  any failed probe counts against the label, none may escape
            errors.append(f"{type(err).__name__}: {err}"[:200])
            continue
        times.append((time.perf_counter() - started) * 1000)
    return {"requests": count, "errors": len(errors), "first_error": errors[0] if errors else None,
            "p50_ms": float(np.median(times)) if times else None}


def live_gate(rows: dict, *, versions: tuple[int, int], stable_model, labels: list[str], config,
              probes: dict) -> dict:
    current, candidate = versions
    canary, stable = rows[candidate], rows[current]
    checks = []

    def check(name: str, value, threshold, passed: bool):
        checks.append({"check": name, "value": None if value is None else round(float(value), 4),
                       "threshold": threshold, "passed": bool(passed)})

    minimum = max(10, config.live_requests // 2)
    check("canary_answers", len(canary), minimum, len(canary) >= minimum)
    result = {"canary_answers": len(canary), "stable_answers": len(stable), "checks": checks, "probes": probes}
    if canary:
        ours = np.stack([r.probabilities for r in canary])
        theirs = stable_model.probabilities([r.text for r in canary])
        agreement = float((ours.argmax(1) == theirs.argmax(1)).mean())
        check("agreement", agreement, config.min_agreement, agreement >= config.min_agreement)
        reference = np.stack([r.probabilities for r in stable]) if stable else theirs
        drop = float(reference.max(1).mean() - ours.max(1).mean())
        check("confidence_drop", drop, config.max_confidence_drop, drop <= config.max_confidence_drop)
        share = lambda p: np.bincount(p.argmax(1), minlength=len(labels)) / len(p)  # noqa: E731
        shift = float(np.abs(share(ours) - share(theirs)).max())
        check("class_shift", shift, config.max_class_shift, shift <= config.max_class_shift)
        result.update(agreement=agreement, canary_confidence=float(ours.max(1).mean()),
                      stable_confidence=float(reference.max(1).mean()),
                      canary_classes=dict(zip(labels, share(ours).round(4).tolist())),
                      stable_classes_same_texts=dict(zip(labels, share(theirs).round(4).tolist())))
    errors = sum(p["errors"] for p in probes.values())
    check("probe_errors", errors, 0, errors == 0)
    stable_p50, canary_p50 = probes["stable"]["p50_ms"], probes["canary"]["p50_ms"]
    ratio = canary_p50 / stable_p50 if stable_p50 and canary_p50 else None
    check("latency_ratio", ratio, config.max_latency_ratio, ratio is not None and ratio <= config.max_latency_ratio)
    result["passed"] = all(c["passed"] for c in checks)
    return result
