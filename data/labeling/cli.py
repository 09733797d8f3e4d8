"""`moat data label …`: the labelling verbs. app/cli.py calls add_label_parser() on its `data` sub-parser."""
from __future__ import annotations

import argparse
import json


def _config(args, cls, shortcuts: list[str]):
    from app.cli import _resolve  # lazy: app.cli imports this module while it builds the parser
    args.overrides = [*shortcuts, *args.overrides]
    return _resolve(args, cls)


def cmd_weak(args) -> int:
    from data.labeling.weak import WeakConfig, run_weak
    config = _config(args, WeakConfig, [f"lf_file={args.lfs}"] if args.lfs else [])
    if config is None:
        return 0
    report = run_weak(args.data, args.out, config)
    line = {k: report[k] for k in ("records", "covered", "coverage", "label_model", "gold_dev_records")}
    if "gold_accuracy_on_covered" in report:
        line["held_out_accuracy"] = report["gold_accuracy_on_covered"]
    print(json.dumps(line))
    return 0


def cmd_select(args) -> int:
    from data.labeling.active import SelectConfig, run_select
    config = _config(args, SelectConfig, [f"n={args.n}"] if args.n else [])
    if config is None:
        return 0
    print(json.dumps(run_select(args.data, args.out, config)))
    return 0


def cmd_merge(args) -> int:
    from data.labeling.active import run_merge
    print(json.dumps(run_merge(args.data, args.annotations, args.out)))
    return 0


def cmd_quality(args) -> int:
    from data.labeling.quality import QualityConfig, run_quality
    config = _config(args, QualityConfig, [])
    if config is None:
        return 0
    report = run_quality(args.data, args.out, config)
    print(json.dumps(report["summary"]))
    return 0


def cmd_augment(args) -> int:
    from data.labeling.augment import AugmentConfig, run_augment
    config = _config(args, AugmentConfig, [])
    if config is None:
        return 0
    report = run_augment(args.data, args.out, config)
    print(json.dumps({k: report[k] for k in ("input", "augmented", "output", "by_operation")}))
    return 0


def add_label_parser(data_verbs, add_config_flags) -> None:
    label = data_verbs.add_parser(
        "label", help="labelling: weak supervision, active learning (select/merge), label quality, augmentation",
        description="Sub-verbs: weak (labelling functions -> label model -> labelled dataset), select (export the "
                    "most informative unlabelled records to annotate), merge (apply the annotations), quality "
                    "(conflicts, rater agreement, ambiguous and likely-mislabeled records), augment (EDA-style "
                    "copies of training records).")
    verbs = label.add_subparsers(dest="label_verb", metavar="LABEL_VERB", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    p = verbs.add_parser(
        "weak", help="apply labelling functions and a label model; write a weakly labelled dataset", formatter_class=fmt,
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
    add_config_flags(p)
    p.set_defaults(func=cmd_weak)

    p = verbs.add_parser(
        "select", help="export the most informative unlabelled records to a CSV/JSONL file to annotate",
        formatter_class=fmt,
        description="Trains the hashed bag-of-words baseline on the records that have a label and ranks the "
                    "unlabelled ones by margin (or least-confidence / entropy / random; --set diversity=3 spreads "
                    "the batch over k-means clusters). Fewer than min_labelled labelled records: a seeded random "
                    "pick. Fill in the empty label column, then run `moat data label merge`.\n"
                    "Example: moat data label select DATA --out to_label.csv -n 200")
    p.add_argument("data", help="dataset dir; records without a label form the pool")
    p.add_argument("--out", required=True, help="annotation file to write (.csv or .jsonl)")
    p.add_argument("-n", type=int, help="how many records to export (same as --set n=N; default 200)")
    add_config_flags(p)
    p.set_defaults(func=cmd_select)

    p = verbs.add_parser(
        "merge", help="apply a filled-in annotation file to a dataset", formatter_class=fmt,
        description="Every non-empty label is applied (meta.annotated = true); empty rows are counted as skipped. "
                    "An unknown id, a duplicate row or a label outside the manifest's labels stops with the line "
                    "number. Example: moat data label merge DATA to_label.csv --out DATA-v2")
    p.add_argument("data", help="dataset dir the file was exported from")
    p.add_argument("annotations", help="the .csv or .jsonl file from `moat data label select`")
    p.add_argument("--out", required=True, help="output dataset dir")
    p.set_defaults(func=cmd_merge)

    p = verbs.add_parser(
        "quality", help="find label problems: duplicate conflicts, rater disagreement, ambiguous, likely mislabeled",
        formatter_class=fmt,
        description="Writes OUT/report.json (counts + examples) and OUT/issues.jsonl (one row per flagged record): "
                    "near-duplicates whose labels differ (data.dedup), per-item rater agreement and Krippendorff's "
                    "alpha when records carry meta.ratings, ambiguous items (|score| below score_margin, or a "
                    "model confidence below confidence_margin), and likely-mislabeled records from 5-fold "
                    "out-of-fold probabilities (cleanlab find_label_issues).\n"
                    "Example: moat data label quality ~/.cache/moatkit/datasets/mr --out /tmp/mr-quality")
    p.add_argument("data", help="labelled dataset dir")
    p.add_argument("--out", required=True, help="report dir to write")
    add_config_flags(p)
    p.set_defaults(func=cmd_quality)

    p = verbs.add_parser(
        "augment", help="add EDA-style copies (synonym, swap, delete, insert) of training records", formatter_class=fmt,
        description="Each copy keeps the label and gets meta.augmented_from = original id. Synonyms are nearest "
                    "neighbours of whole-word tokens in MiniLM's input embeddings (offline). Seeded. Refuses "
                    "datasets that look like dev/test splits (augmented copies would leak into evaluation).\n"
                    "Example: moat data label augment SPLITS/train --out TRAIN-AUG --set copies=2")
    p.add_argument("data", help="training dataset dir")
    p.add_argument("--out", required=True, help="output dataset dir (originals + copies)")
    add_config_flags(p)
    p.set_defaults(func=cmd_augment)
