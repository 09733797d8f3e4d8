"""Label quality on real MR: rater agreement (Krippendorff's alpha), duplicate conflicts, planted label errors."""
import json

import numpy as np
import pytest

from moatkit.app.cli import main
from moatkit.data.dataset import read_records, write_dataset
from moatkit.data.labeling.baseline import label_indices
from moatkit.data.labeling.quality import likely_mislabeled, mr_ratings, rater_agreement

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def mr(mr_dir):
    return read_records(mr_dir)


def test_rater_agreement_on_mr_per_rater_scores(mr):
    table = mr_ratings()
    ratings = [table[r["id"]] for r in mr]
    assert len(ratings) == 10568 and np.mean([len(r) for r in ratings]) > 15
    stats = rater_agreement(ratings)
    assert round(stats["alpha_interval"], 4) == 0.7993  # measured on all 10,568 sentences
    assert round(stats["mean_sign_agreement"], 4) == 0.9022
    # Sentences whose mean score sits near 0 are the ones raters disagree on.
    near_zero = np.array([abs(r["score"]) < 0.5 for r in mr])
    agreement = stats["per_item_sign_agreement"]
    assert agreement[near_zero].mean() < 0.6 < 0.9 < agreement[~near_zero].mean()


def test_planted_label_errors_are_found(mr):
    sample = mr[:3000]
    y = label_indices(sample, LABELS)
    flipped = np.random.default_rng(0).random(len(y)) < 0.1
    ranked, probs = likely_mislabeled([r["text"] for r in sample], np.where(flipped, 1 - y, y), labels=LABELS)
    found = np.zeros(len(y), dtype=bool)
    found[ranked] = True
    precision, recall = (found & flipped).mean() / found.mean(), (found & flipped).sum() / flipped.sum()
    # measured: 234 flagged, precision 0.80, recall 0.59 (base rate 0.106). These 3,000 are 97% positive, which makes
    # flips stand out; on all of MR (balanced, 10% flipped) the bag-of-words baseline gives precision 0.27, recall 0.69.
    assert precision > 0.6 and recall > 0.5, (precision, recall)


def test_quality_report_on_mr_sample(mr, tmp_path):
    by_id = {r["id"]: r for r in mr}
    sample = mr[:600] + [by_id["mr-3490"], by_id["mr-10374"]]  # "One of the best/worst movies of the year."
    data = tmp_path / "mr"
    write_dataset(data, sample, name="mr-sample", labels=LABELS, provenance={}, license="research")
    assert main(["data", "label", "quality", str(data), "--out", str(tmp_path / "q"), "--set", "ratings=catalog:mr"]) == 0
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    checks = report["checks"]
    assert checks["duplicate_conflicts"]["clusters"] == 1
    assert checks["duplicate_conflicts"]["examples"][0]["labels"] == ["positive", "negative"]
    # alpha compares within- to between-item spread: MR's first 600 sentences are nearly all positive, so there is
    # little between-item spread and alpha is far below the whole set's 0.80 (measured 0.4046)
    assert checks["rater_agreement"]["items"] == 602
    assert round(checks["rater_agreement"]["krippendorff_alpha_interval"], 4) == 0.4046
    assert checks["ambiguous_score"]["records"] == sum(abs(r["score"]) < 0.5 for r in sample)
    assert checks["likely_mislabeled"]["records"] > 0 and checks["likely_mislabeled"]["examples"][0]["suggested"] in LABELS
    issues = [json.loads(line) for line in (tmp_path / "q" / "issues.jsonl").read_text().splitlines()]
    assert len(issues) == report["summary"]["flagged"]
    assert {"mr-3490", "mr-10374"} <= {i["id"] for i in issues if "duplicate-conflict" in i["issues"]}
