"""Step 1 of `moat iterate`: from a version's logged traffic, the texts worth annotating; their answers merged back.

The pool is every distinct text the version answered (the request logs hold its probabilities). A text scores by
its uncertainty (margin between the top two classes) plus `drift_weight` times its distance to the version's
reference profile (mean distance to the 5 nearest reference embeddings: how unlike the training domain it is),
both as ranks so neither scale dominates; k-means over the best diversity·budget texts keeps one per cluster.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moatkit.data.core.errors import DataError
from moatkit.data.labeling.active import export_for_annotation, informativeness, merge_annotations, read_annotations
from moatkit.serving.monitoring.detectors import squared_distances
from moatkit.serving.monitoring.feedback import text_key
from moatkit.serving.monitoring.logs import LogReader


def logged_pool(logs: list[str], model: str, version: int, labels: list[str], *, exclude: set[str] = frozenset()):
    """Distinct texts version `version` of `model` answered: [{id, text, probabilities, source, requests}], and
    the reader's record counts. `exclude` holds text keys (e.g. the training data's) left out of the pool."""
    reader = LogReader(logs, model=model, labels=labels)
    if not reader.discover():
        raise DataError(f"no request logs match {logs}",
                        fix="point logs at the server's logging_config filename_prefix (e.g. --set logs=[logs/x])")
    pool: dict[str, dict] = {}
    for row in reader.poll(final=True):
        if row.version != version or row.probabilities is None:
            continue
        key = text_key(row.text)
        if key in exclude:
            continue
        if key in pool:
            pool[key]["requests"] += 1
            continue
        pool[key] = {"id": "req-" + key[:16], "text": row.text, "probabilities": row.probabilities,
                     "source": row.source, "requests": 1}
    if not pool:
        raise DataError(f"the logs {logs} hold no classified text answered by {model} version {version}",
                        fix="log the version's traffic (model config logging_config) or pick the served version")
    return list(pool.values()), dict(reader.counts)


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values, kind="stable"), kind="stable") / max(len(values) - 1, 1)


def novelty(embeddings: np.ndarray, reference: np.ndarray, *, k: int = 5) -> np.ndarray:
    """Mean distance to the k nearest reference embeddings (the monitor's per-text out-of-distribution score)."""
    reference = reference.astype(np.float64)
    scores = []
    for start in range(0, len(embeddings), 2048):  # (2048, reference) at a time: 100k logged texts stay small
        chunk = squared_distances(embeddings[start:start + 2048].astype(np.float64), reference)
        scores.append(np.sqrt(np.partition(chunk, min(k, chunk.shape[1]) - 1, axis=1)[:, :k]).mean(1))
    return np.concatenate(scores) if scores else np.zeros(0)


def choose(probabilities: np.ndarray, budget: int, *, strategy: str, seed: int, embeddings=None, reference=None,
           drift_weight: float = 1.0, diversity: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(indices to annotate, their scores). Random ignores everything but the seed."""
    from moatkit.data.labeling.active import select

    if strategy == "random":
        chosen = select(probabilities, budget, strategy="random", seed=seed)
        return chosen, np.zeros(len(chosen))
    scores = _ranks(informativeness(probabilities, "margin"))
    if embeddings is not None and reference is not None and drift_weight > 0:
        scores = scores + drift_weight * _ranks(novelty(embeddings, reference))
    chosen = select(probabilities, budget, strategy="margin", seed=seed, scores=scores,
                    features=embeddings if diversity else None, diversity=diversity)
    return chosen, scores[chosen]


def write_batch(pool: list[dict], chosen: np.ndarray, scores: np.ndarray, labels: list[str], out: Path) -> Path:
    """to_label.csv (id, text, label="", suggestion, confidence) and batch.jsonl (what each id was, for the merge)."""
    out.mkdir(parents=True, exist_ok=True)
    picked = [pool[i] for i in chosen]
    probabilities = np.stack([p["probabilities"] for p in picked])
    path = export_for_annotation(picked, out / "to_label.csv", probs=probabilities, labels=labels)
    with open(out / "batch.jsonl", "w", encoding="utf-8") as handle:
        for row, score in zip(picked, scores):
            handle.write(json.dumps({"id": row["id"], "text": row["text"], "source": row["source"],
                                     "requests": row["requests"], "score": round(float(score), 4),
                                     "probabilities": [round(float(p), 5) for p in row["probabilities"]]}) + "\n")
    return path


def read_batch(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "batch.jsonl").read_text(encoding="utf-8").splitlines() if line]


def merge_answers(batch: list[dict], annotations_path: str, labels: list[str]) -> tuple[list[dict], dict]:
    """The batch's answered texts as labelled records, and a report. The same answer given twice is one
    (duplicates); different answers for one id are left out and listed (conflicts); an id that was never in the
    batch (a text never served) stops the merge with the row named."""
    rows = read_annotations(annotations_path)
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row.get("id"), []).append(row)
    kept, duplicates, conflicts = [], 0, []
    for rid, group in by_id.items():
        answers = {(r.get("label") or "").strip() for r in group} - {""}
        if len(answers) > 1:
            conflicts.append({"id": rid, "labels": sorted(answers), "lines": [r.get("_line") for r in group]})
            continue
        duplicates += len(group) - 1
        kept.append(next((r for r in group if (r.get("label") or "").strip()), group[0]))
    records = [{"id": b["id"], "text": b["text"], "source": "feedback", "meta": {"request": b["source"]}}
               for b in batch]
    merged, report = merge_annotations(records, kept, labels, source=str(annotations_path))
    labelled = [r for r in merged if r.get("label")]
    report.update(duplicates=duplicates, conflicts=len(conflicts), conflicting=conflicts[:20],
                  unanswered=len(batch) - len(labelled))
    if not labelled:
        raise DataError(f"'{annotations_path}' answers none of the {len(batch)} texts of the batch",
                        fix="fill the label column (one of " + ", ".join(labels) + ") and run again")
    return labelled, report
