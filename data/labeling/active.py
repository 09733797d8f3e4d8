"""Active learning: pick the most informative unlabelled records, export them for annotation, merge answers back."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Literal

import numpy as np

from moatkit.data.core.errors import ConfigError, DataError

Strategy = Literal["least-confidence", "margin", "entropy", "random"]


def informativeness(probs: np.ndarray, strategy: Strategy) -> np.ndarray:
    """Higher = more informative. probs: (n, k) predicted class probabilities."""
    probs = np.asarray(probs, dtype=float)
    if strategy == "least-confidence":
        return 1.0 - probs.max(axis=1)
    if strategy == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])
    if strategy == "entropy":
        return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    raise DataError(f"unknown selection strategy {strategy!r}", fix="use least-confidence, margin, entropy or random")


def select(probs: np.ndarray, n: int, *, strategy: Strategy = "margin", seed: int = 0,
           features=None, diversity: int = 0, scores: np.ndarray | None = None) -> np.ndarray:
    """Indices of the n records to annotate next, most informative first.

    With `diversity` = c > 0 and `features` (n, d), the top c·n candidates are clustered into n groups (k-means)
    and the most informative record of each group is taken, so a batch does not spend its budget on near-copies.
    `scores` (higher = more informative) replaces the strategy's own, e.g. uncertainty mixed with novelty.
    """
    total = len(probs)
    n = min(n, total)
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return rng.permutation(total)[:n]
    scores = informativeness(probs, strategy) if scores is None else np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")
    if not diversity or features is None or n < 2:
        return order[:n]
    from sklearn.cluster import KMeans

    pool = order[: min(total, diversity * n)]
    clusters = KMeans(n_clusters=n, n_init=3, random_state=seed).fit_predict(features[pool])
    chosen = [pool[clusters == c][0] for c in range(n) if (clusters == c).any()]  # pool is sorted: [0] = best
    return np.array(sorted(chosen, key=lambda i: -scores[i]))


def export_for_annotation(records: list[dict], path: str | Path, *, probs: np.ndarray | None = None,
                          labels: list[str] | None = None) -> Path:
    """Writes a CSV (id, text, label="" [, suggestion, confidence]) or JSONL with an empty label to fill in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, record in enumerate(records):
        row = {"id": record["id"], "text": record["text"], "label": ""}
        if probs is not None and labels:
            row["suggestion"] = labels[int(np.argmax(probs[i]))]
            row["confidence"] = round(float(np.max(probs[i])), 4)
        rows.append(row)
    if path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["id", "text", "label"])
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        raise DataError(f"annotation file '{path}' must end in .csv or .jsonl", fix="e.g. --out to_label.csv")
    return path


def read_annotations(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file '{path}' does not exist", fix="pass the file exported by `moat data label select`")
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"id", "label"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"'{path}' lacks the column(s) {sorted(missing)}", fix="keep the exported header row")
            return [dict(row, _line=line) for line, row in enumerate(reader, start=2)]
    rows = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text.strip():
            try:
                rows.append(dict(json.loads(text), _line=line))
            except json.JSONDecodeError as err:
                raise DataError(f"'{path}' line {line} is not JSON ({err.msg})", fix="fix or remove that line") from None
    return rows


def merge_annotations(records: list[dict], annotations: list[dict], labels: list[str], *, source: str = "annotations"):
    """Returns (records with the answers applied, report). Rows with an empty label are counted as skipped.

    An unknown id or a label outside `labels` stops with an error naming the row: a typo must not be merged
    silently, nor dropped silently.
    """
    by_id = {r["id"]: i for i, r in enumerate(records)}
    merged = [dict(r) for r in records]
    report = {"rows": len(annotations), "labelled": 0, "changed": 0, "skipped_empty": 0, "by_label": {}}
    seen = set()
    for row in annotations:
        rid, label, line = row.get("id"), (row.get("label") or "").strip(), row.get("_line")
        if rid not in by_id:
            raise DataError(f"{source} line {line}: id {rid!r} is not in the dataset",
                            fix="keep the ids exactly as exported, and merge into the dataset they came from")
        if rid in seen:
            raise DataError(f"{source} line {line}: id {rid!r} is annotated twice", fix="keep one row per id")
        seen.add(rid)
        if not label:
            report["skipped_empty"] += 1
            continue
        if label not in labels:
            raise DataError(f"{source} line {line}: label {label!r} for id {rid!r} is not one of {labels}",
                            fix="correct the label (labels are case-sensitive)")
        record = merged[by_id[rid]]
        report["changed"] += int(record.get("label") not in (None, label))
        record["label"] = label
        record["meta"] = {**(record.get("meta") or {}), "annotated": True}
        report["labelled"] += 1
        report["by_label"][label] = report["by_label"].get(label, 0) + 1
    return merged, report


@dataclasses.dataclass
class SelectConfig:
    n: int = 200                        # records to export for annotation
    strategy: Strategy = "margin"
    diversity: int = 0                  # > 0: k-means over the top diversity·n candidates, one pick per cluster
    labels: list[str] | None = None     # default: the dataset manifest's labels
    min_labelled: int = 20              # below this many labelled records the pick is random (cold start)
    seed: int = 0

    def validate(self):
        if self.n < 1:
            raise ConfigError(f"n={self.n} must be at least 1", fix="e.g. --set n=200")
        if self.diversity < 0:
            raise ConfigError(f"diversity={self.diversity} must be >= 0", fix="0 turns it off; 3 is a good value")


def run_select(data_dir: str | Path, out_path: str | Path, config: SelectConfig) -> dict:
    """`moat data label select`: trains the baseline on the labelled records, exports the n most informative
    unlabelled ones (with the model's suggestion and confidence) to a CSV/JSONL file to annotate."""
    from moatkit.data.dataset import read_manifest, read_records
    from moatkit.data.labeling.baseline import TextClassifier, label_indices

    config.validate()
    manifest = read_manifest(data_dir)
    labels = list(config.labels or manifest.get("labels") or [])
    if not labels:
        raise ConfigError(f"dataset '{data_dir}' lists no labels", fix="pass them with --set labels=[A,B]")
    records = read_records(data_dir)
    labelled = [r for r in records if r.get("label") in labels]
    pool = [r for r in records if r.get("label") in (None, "")]
    stray = len(records) - len(labelled) - len(pool)
    if stray:
        bad = next(r for r in records if r.get("label") not in (None, "", *labels))
        raise DataError(f"{stray} record(s) in '{data_dir}' have a label outside {labels}, e.g. {bad['id']!r}: "
                        f"{bad['label']!r}", fix="fix those labels or pass the full label set with --set labels=[...]")
    if not pool:
        raise DataError(f"every record in '{data_dir}' is already labelled", fix="select from a dataset with unlabelled records")
    report = {"records": len(records), "labelled": len(labelled), "pool": len(pool), "strategy": config.strategy}
    probs = None
    if len(labelled) < config.min_labelled or config.strategy == "random":
        report["strategy"] = "random" if config.strategy == "random" else f"random (cold start: {len(labelled)} labelled)"
        chosen = np.random.default_rng(config.seed).permutation(len(pool))[:config.n]
    else:
        model = TextClassifier(labels=labels, seed=config.seed)
        model.fit_features(model.features([r["text"] for r in labelled]), label_indices(labelled, labels))
        features = model.features([r["text"] for r in pool])
        probs = model.predict_proba_features(features)
        chosen = select(probs, config.n, strategy=config.strategy, seed=config.seed,
                        features=features if config.diversity else None, diversity=config.diversity)
    export_for_annotation([pool[i] for i in chosen], out_path, probs=None if probs is None else probs[chosen],
                          labels=labels)
    report.update(selected=len(chosen), out=str(out_path))
    if probs is not None:
        report["mean_confidence_selected"] = round(float(probs[chosen].max(axis=1).mean()), 4)
        report["mean_confidence_pool"] = round(float(probs.max(axis=1).mean()), 4)
    return report


def run_merge(data_dir: str | Path, annotations_path: str | Path, out_dir: str | Path) -> dict:
    """`moat data label merge`: writes a copy of the dataset with the annotated labels applied; report.json gets an
    "annotations" section (rows, labelled, changed, skipped_empty, by_label)."""
    from moatkit.data.dataset import read_manifest, read_records, write_dataset
    from moatkit.data.labeling.weak import _merge_report

    manifest = read_manifest(data_dir)
    labels = list(manifest.get("labels") or [])
    if not labels:
        raise ConfigError(f"dataset '{data_dir}' lists no labels", fix="set manifest labels when creating the dataset")
    merged, report = merge_annotations(read_records(data_dir), read_annotations(annotations_path), labels,
                                       source=str(annotations_path))
    write_dataset(out_dir, merged, name=manifest["name"], labels=labels, license=manifest.get("license", "unknown"),
                  provenance={"annotations_merged_into": str(Path(data_dir).resolve()),
                              "annotations": str(Path(annotations_path).resolve()), "source": manifest.get("provenance")})
    _merge_report(out_dir, "annotations", report)
    return report
