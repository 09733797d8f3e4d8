"""`moat compress`: compress a fine-tuned model and compare the variants."""
from __future__ import annotations

from moatkit.app.cli.common import add_verb


def compress(args, config) -> None:
    from moatkit.app.compress_report import run_compress
    run_compress(config)


def add_parsers(verbs) -> None:
    p = add_verb(
        verbs, "compress", compress, config="moatkit.models.compress.base:CompressConfig",
        shortcuts=lambda args: [f"methods=[{args.methods}]"] if args.methods else [],
        help="compress a fine-tuned model (TFLite PTQ, pruning, clustering, QAT, distillation) and compare the "
             "variants",
        description="Runs the selected methods on a `moat finetune` model dir (the float32 baseline) and evaluates "
                    "every variant on the fine-tuning run's test split: accuracy/macro-F1 deltas, on-disk and gzip "
                    "size, p50/p99 batch-1 latency and batch-32 throughput on CPU (measured in the same run), "
                    "parameters and sparsity. Writes OUT_DIR/report.{json,md,png} and TensorBoard text/image, and "
                    "exports each variant to REPO/NAME-VARIANT/VERSION (TFLite variants as model.tflite, served with "
                    "--prefer_tflite_model). Example: moat compress --methods ptq --set model_dir=runs/sentiment/model "
                    "--set out_dir=runs/sentiment/compress; per-method settings: --set prune.target_sparsity=0.8 "
                    "--set 'ptq.modes=[dynamic,int8]' --set distill.student_layers=3")
    p.add_argument("--methods", metavar="LIST",
                   help="all, or a comma list of ptq, prune, cluster, qat, distill (shortcut for --set methods=[…])")
