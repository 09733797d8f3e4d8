"""`moat finetune`, `moat pretrain`, `moat train-seq2seq`: the training verbs."""
from __future__ import annotations

import json
import sys

from moatkit.app.cli.common import add_verb


def _keras_verbosity() -> int:
    return 1 if sys.stdout.isatty() else 2  # a progress bar on a terminal, one line per epoch in a log


def finetune(args, config) -> None:
    from moatkit.models.finetune import finetune as run_finetune
    if args.sweep:
        from moatkit.models.sweep import parse_grid, run_sweep
        summary = run_sweep(config, parse_grid(args.sweep), verbose=_keras_verbosity())
        for row in summary["runs"]:
            print(f"{row['run']:<40} dev {row['dev_score']:.4f}  test {row['test_score']:.4f}")
        print(f"best on dev: {summary['best_on_dev']['run']}; HParams: {summary['tensorboard']}")
        return
    report = run_finetune(config, verbose=_keras_verbosity())
    test = report["test"]
    if "accuracy" in test:
        scores = f"accuracy {test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}  ECE {test['ece']:.4f}"
    else:
        scores = f"Pearson {test['pearson']:.4f}  Spearman {test['spearman']:.4f}  MAE {test['mae']:.4f}"
    print(f"test {scores}  on {test['examples']} examples (train {report['sizes']['train']}, dev "
          f"{report['sizes']['dev']}); report: {config.run_dir}/report.json; "
          f"TensorBoard: tensorboard --logdir {config.run_dir}")


def train_seq2seq(args, config) -> None:
    if not args.export_only:
        from moatkit.models.seq2seq.train import train_seq2seq as run_training
        report = run_training(config, verbose=_keras_verbosity())
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
        from moatkit.models.seq2seq.export import Seq2SeqExportConfig, export_translator
        info = export_translator(Seq2SeqExportConfig(model_dir=f"{config.run_dir}/model", repo=args.export,
                                                     name=args.name))
        print(json.dumps(info))


def pretrain(args, config) -> int:
    from moatkit.models.pretrain import launch_local_workers, pretrain as run_pretrain
    if args.transfer_only:
        from moatkit.models.transfer import add_transfer_to_report
        _print_transfer(add_transfer_to_report(config.run_dir, config.transfer)["transfer"])
        return 0
    if args.workers:
        argv = (["--config", args.config] if args.config else []) + [a for o in args.overrides for a in ("--set", o)]
        return launch_local_workers(argv, workers=args.workers, run_dir=config.run_dir)
    report = run_pretrain(config)
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


def _pretrain_shortcuts(args) -> list[str]:
    return [f"{key}={value}" for key, value in (("precision", args.precision), ("strategy", args.strategy)) if value]


def add_parsers(verbs) -> None:
    p = add_verb(verbs, "finetune", finetune, config="moatkit.models.finetune:FinetuneConfig",
                 help="fine-tune a TF BERT classifier (HF TFBertForSequenceClassification)",
                 description="Tasks: mr-polarity, mr-intensity (regression), trec-6, trec-50, or "
                             "classification/regression with --set data=DIR. Writes report.json, "
                             "TensorBoard logs and model/ into run_dir.")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="grid search: one run (and HParams trial) per combination, e.g. --sweep learning_rate=1e-4,5e-5")
    p = add_verb(
        verbs, "pretrain", pretrain, config="moatkit.models.pretrain:PretrainConfig", shortcuts=_pretrain_shortcuts,
        help="pretrain a BERT (masked LM + NSP/SOP) on `moat data pretraining-examples` TFRecords",
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
    p = add_verb(verbs, "train-seq2seq", train_seq2seq, config="moatkit.models.seq2seq.train:Seq2SeqConfig",
                 help="train our Transformer for translation (Bible de→en by default)",
                 description="Trains the seq2seq Transformer on verse-aligned pairs (catalog bible-en-de: "
                             "German Elberfelder → English KJV) with held-out chapters, reports corpus BLEU "
                             "(sacrebleu) next to copy-source and word-by-word dictionary baselines, and "
                             "resumes from run_dir/checkpoints when rerun. --export writes a SavedModel "
                             "(raw German strings in, English strings out) into a model repository.")
    p.add_argument("--export", metavar="REPO", help="after training, export run_dir/model into REPO/NAME/VERSION/")
    p.add_argument("--name", default="translate", help="model name in the repository (default: translate)")
    p.add_argument("--export-only", action="store_true", help="skip training; export an already trained run_dir")
