"""`moat data label …`: weak supervision, active learning (select, merge), label quality, augmentation."""
from __future__ import annotations

import argparse
import json

from moatkit.app.cli.common import add_verb


def weak(args, config) -> None:
    from moatkit.data.labeling.weak import run_weak
    report = run_weak(args.data, args.out, config)
    line = {k: report[k] for k in ("records", "covered", "coverage", "label_model", "gold_dev_records")}
    if "gold_accuracy_on_covered" in report:
        line["held_out_accuracy"] = report["gold_accuracy_on_covered"]
    print(json.dumps(line))


def select(args, config) -> None:
    from moatkit.data.labeling.active import run_select
    print(json.dumps(run_select(args.data, args.out, config)))


def merge(args) -> None:
    from moatkit.data.labeling.active import run_merge
    print(json.dumps(run_merge(args.data, args.annotations, args.out)))


def quality(args, config) -> None:
    from moatkit.data.labeling.quality import run_quality
    print(json.dumps(run_quality(args.data, args.out, config)["summary"]))


def augment(args, config) -> None:
    from moatkit.data.labeling.augment import run_augment
    report = run_augment(args.data, args.out, config)
    print(json.dumps({k: report[k] for k in ("input", "augmented", "output", "by_operation")}))


def add_parsers(data_verbs) -> None:
    label = data_verbs.add_parser(
        "label", help="labelling: weak supervision, active learning (select/merge), label quality, augmentation",
        description="Sub-verbs: weak (labelling functions -> label model -> labelled dataset), select (export the "
                    "most informative unlabelled records to annotate), merge (apply the annotations), quality "
                    "(conflicts, rater agreement, ambiguous and likely-mislabeled records), augment (EDA-style "
                    "copies of training records).")
    verbs = label.add_subparsers(dest="label_verb", metavar="LABEL_VERB", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    p = add_verb(
        verbs, "weak", weak, config="moatkit.data.labeling.weak:WeakConfig", formatter_class=fmt,
        shortcuts=lambda args: [f"lf_file={args.lfs}"] if args.lfs else [],
        help="apply labelling functions and a label model; write a weakly labelled dataset",
        description="Runs every @labeling_function() in --lfs over the records, fits the label model and writes the "
                    "records with label, meta.label_probs and meta.lf_votes. The default model (weighted) weighs each "
                    "LF by its log-odds accuracy on gold_budget (200) records that already have a label (e.g. merged "
                    "annotations); the other labelled records score it against majority vote in report.json. "
                    "Records no LF labels are dropped as no-lf-fired (--set uncovered=keep keeps them unlabelled).\n"
                    "Example: moat data label weak ~/.cache/moatkit/datasets/trec "
                    "--lfs data/labeling/examples/trec_lfs.py --out /tmp/trec-weak")
    p.add_argument("data", help="dataset dir (with manifest.json listing the labels)")
    p.add_argument("--lfs", help="Python file with @labeling_function()s (same as --set lf_file=FILE)")
    p.add_argument("--out", required=True, help="output dataset dir")

    p = add_verb(
        verbs, "select", select, config="moatkit.data.labeling.active:SelectConfig", formatter_class=fmt,
        shortcuts=lambda args: [f"n={args.n}"] if args.n else [],
        help="export the most informative unlabelled records to a CSV/JSONL file to annotate",
        description="Trains the hashed bag-of-words baseline on the records that have a label and ranks the "
                    "unlabelled ones by margin (or least-confidence / entropy / random; --set diversity=3 spreads "
                    "the batch over k-means clusters). Fewer than min_labelled labelled records: a seeded random "
                    "pick. Fill in the empty label column, then run `moat data label merge`.\n"
                    "Example: moat data label select DATA --out to_label.csv -n 200")
    p.add_argument("data", help="dataset dir; records without a label form the pool")
    p.add_argument("--out", required=True, help="annotation file to write (.csv or .jsonl)")
    p.add_argument("-n", type=int, help="how many records to export (same as --set n=N; default 200)")

    p = add_verb(
        verbs, "merge", merge, help="apply a filled-in annotation file to a dataset", formatter_class=fmt,
        description="Every non-empty label is applied (meta.annotated = true); empty rows are counted as skipped. "
                    "An unknown id, a duplicate row or a label outside the manifest's labels stops with the line "
                    "number. Example: moat data label merge DATA to_label.csv --out DATA-v2")
    p.add_argument("data", help="dataset dir the file was exported from")
    p.add_argument("annotations", help="the .csv or .jsonl file from `moat data label select`")
    p.add_argument("--out", required=True, help="output dataset dir")

    p = add_verb(
        verbs, "quality", quality, config="moatkit.data.labeling.quality:QualityConfig", formatter_class=fmt,
        help="find label problems: duplicate conflicts, rater disagreement, ambiguous, likely mislabeled",
        description="Writes OUT/report.json (counts + examples) and OUT/issues.jsonl (one row per flagged record): "
                    "near-duplicates whose labels differ (data.dedup), per-item rater agreement and Krippendorff's "
                    "alpha when records carry meta.ratings, ambiguous items (|score| below score_margin, or a "
                    "model confidence below confidence_margin), and likely-mislabeled records from 5-fold "
                    "out-of-fold probabilities (cleanlab find_label_issues).\n"
                    "Example: moat data label quality ~/.cache/moatkit/datasets/mr --out /tmp/mr-quality")
    p.add_argument("data", help="labelled dataset dir")
    p.add_argument("--out", required=True, help="report dir to write")

    p = add_verb(
        verbs, "augment", augment, config="moatkit.data.labeling.augment:AugmentConfig", formatter_class=fmt,
        help="add EDA-style copies (synonym, swap, delete, insert) of training records",
        description="Each copy keeps the label and gets meta.augmented_from = original id. Synonyms are nearest "
                    "neighbours of whole-word tokens in MiniLM's input embeddings (offline). Seeded. Refuses "
                    "datasets that look like dev/test splits (augmented copies would leak into evaluation).\n"
                    "Example: moat data label augment SPLITS/train --out TRAIN-AUG --set copies=2")
    p.add_argument("data", help="training dataset dir")
    p.add_argument("--out", required=True, help="output dataset dir (originals + copies)")
