"""`moat compress`: run the selected methods on the baseline, evaluate every variant the same way, export them.

Per variant, on the same test split and inputs (padded to max_length): accuracy and macro-F1 with their deltas vs.
the float32 baseline, on-disk and gzip size, p50/p99 single-example latency and batch-32 throughput on CPU (all
variants measured one after the other in this process, after all methods ran, warm-up calls first), parameter count
and kernel sparsity. Written to <out_dir>/report.{json,md,png} and TensorBoard (<out_dir>/tensorboard: the table as
text, the plot as an image). The float32 baseline is measured as a token-id SavedModel, like every Keras variant.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib
import io
import json
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Callable


import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ConfigError
from moatkit.models import metrics as metrics_lib
from moatkit.models.compress.base import (INPUT_NAMES, METHODS, Batch, CompressConfig, CompressContext, DistillSettings,
                                          PruneSettings, Variant, load_context)

SAVED_MODELS = "saved_models"


def method_module(method: str):
    """The method's module, imported only when selected; a missing one is a config error, not an ImportError."""
    if method not in METHODS:
        raise ConfigError(f"unknown compression method '{method}'", fix=f"choose from {', '.join(METHODS)}")
    name = f"moatkit.models.compress.{method}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing = "this install" if err.name == name else f"the package '{err.name}'"
        raise ConfigError(f"compression method '{method}' is not available: {name} cannot be imported "
                          f"({err.name} is missing from {missing})",
                          fix="install moatkit with its dependencies, or leave the method out of --methods") from None


# === Measurements ===

def path_bytes(path: Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def gzip_bytes(path: Path) -> int:
    """Size after gzip -9: of the file, or of an uncompressed tar of the directory (zeros and clustered weights
    compress; dense float weights hardly do)."""
    path = Path(path)
    if path.is_file():
        return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            tar.add(item, arcname=str(item.relative_to(path)))
    return len(gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))


def kernel_sparsity(model) -> tuple[float | None, dict[str, float]]:
    """Fraction of exact zeros over all kernels (2-D+ weights named *kernel*), and per kernel."""
    per, zeros, total = {}, 0, 0
    for weight in model.weights:
        if "kernel" not in weight.name or len(weight.shape) < 2:
            continue
        values = weight.numpy()
        per[weight.name] = round(float((values == 0).mean()), 4)
        zeros, total = zeros + int((values == 0).sum()), total + values.size
    return (zeros / total if total else None), per


def count_params(model) -> int | None:
    try:
        return int(model.count_params())
    except (ValueError, AttributeError):
        return None


def save_token_model(model, path: Path, max_length: int) -> Path:
    """A token-id SavedModel (serving_default: input_ids, attention_mask (batch, max_length) int32 → logits)."""
    from moatkit.models.compress.ptq import token_id_signature
    from moatkit.models.export import save_signatures

    if path.exists():
        shutil.rmtree(path)
    module = tf.Module()
    # Track the weights, not the model: a compiled model would also save its optimizer slots (2x the weights)
    module.weights = list(model.weights)
    save_signatures(module, path, {"serving_default": token_id_signature(model, max_length)})
    return path


def saved_model_predict(path: Path):
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]

    def predict(batch: Batch) -> np.ndarray:
        return signature(**{name: tf.constant(batch[name]) for name in INPUT_NAMES})["logits"].numpy()

    predict.loaded = loaded  # keeps the restored variables alive as long as the function
    return predict


def predict_all(predict, arrays: Batch, batch_size: int = 32) -> np.ndarray:
    n = len(arrays["input_ids"])
    return np.concatenate([predict({k: v[i:i + batch_size] for k, v in arrays.items()})
                           for i in range(0, n, batch_size)])


def time_predict(predict, arrays: Batch, *, repeats: int, batches: int, warmup: int, batch_size: int = 32) -> dict:
    """p50/p99 ms of `repeats` batch-1 calls and examples/s of `batches` batch-`batch_size` calls, test examples
    in order (the same inputs for every variant), after `warmup` untimed calls of each shape."""
    n = len(arrays["input_ids"])

    def rows(start, size):
        index = np.arange(start, start + size) % n
        return {k: v[index] for k, v in arrays.items()}

    for i in range(warmup):
        predict(rows(i, 1))
    single = []
    for i in range(repeats):
        batch = rows(i, 1)
        tick = time.perf_counter()
        predict(batch)
        single.append(time.perf_counter() - tick)
    for i in range(max(warmup // 3, 1)):
        predict(rows(i * batch_size, batch_size))
    tick = time.perf_counter()
    for i in range(batches):
        predict(rows(i * batch_size, batch_size))
    seconds = time.perf_counter() - tick
    single_ms = np.array(single) * 1000
    return {"p50_ms": round(float(np.percentile(single_ms, 50)), 3), "p99_ms": round(float(np.percentile(single_ms, 99)), 3),
            "batch_size": batch_size, "examples_per_s": round(batch_size * batches / seconds, 1)}


# === Evaluation ===

def prepare(variant: Variant, context: CompressContext) -> Variant:
    """Fills `predict` (from the token-id SavedModel for Keras models), params and sparsity."""
    if variant.model is not None:
        if variant.sparsity is None:
            variant.sparsity, per_kernel = kernel_sparsity(variant.model)
            variant.notes.setdefault("kernel_sparsity", per_kernel)
        if variant.params is None:
            variant.params = count_params(variant.model)
        if variant.tflite_path is None:
            path = save_token_model(variant.model, context.out_dir / SAVED_MODELS / variant.name, context.max_length)
            variant.notes["saved_model"] = str(path)
            variant.predict = saved_model_predict(path)
    if variant.predict is None and variant.tflite_path is not None:
        from moatkit.models.compress.ptq import tflite_predict
        variant.predict = tflite_predict(variant.tflite_path, num_threads=context.config.num_threads)
    if variant.predict is None:
        raise ConfigError(f"variant '{variant.name}' has neither a model, a .tflite file nor a predict function",
                          fix=f"the {variant.method} method must return one of them")
    return variant


def artifact_path(variant: Variant) -> Path:
    if variant.tflite_path is None and "saved_model" not in variant.notes:
        raise ConfigError(f"variant '{variant.name}' has no model or .tflite file to measure the size of",
                          fix=f"the {variant.method} method must return a model or a tflite_path")
    return Path(variant.tflite_path or variant.notes["saved_model"])


def evaluate(variant: Variant, context: CompressContext) -> dict:
    logits = predict_all(variant.predict, context.arrays["test"])
    scores = metrics_lib.classification_metrics(logits, context.targets["test"], context.labels, brief=True)
    path = artifact_path(variant)
    return {"name": variant.name, "method": variant.method, "artifact": str(path),
            "accuracy": round(scores["accuracy"], 4), "macro_f1": round(scores["macro_f1"], 4),
            "bytes": path_bytes(path), "gzip_bytes": gzip_bytes(path), "params": variant.params,
            "sparsity": None if variant.sparsity is None else round(float(variant.sparsity), 4),
            "notes": {k: v for k, v in variant.notes.items() if k != "kernel_sparsity"},
            "kernel_sparsity": variant.notes.get("kernel_sparsity")}


def add_deltas(rows: list[dict]) -> None:
    base = rows[0]
    for row in rows:
        row["accuracy_delta_points"] = round(100 * (row["accuracy"] - base["accuracy"]), 2)
        row["macro_f1_delta_points"] = round(100 * (row["macro_f1"] - base["macro_f1"]), 2)
        row["smaller_x"] = round(base["bytes"] / row["bytes"], 2)
        row["gzip_smaller_x"] = round(base["gzip_bytes"] / row["gzip_bytes"], 2)
        row["speedup_p50_x"] = round(base["p50_ms"] / row["p50_ms"], 2)
        row["throughput_x"] = round(row["examples_per_s"] / base["examples_per_s"], 2)


# === The acceptance targets, checked on whichever variants exist ===

def _matching(rows, method, test=lambda row: True):
    return [row for row in rows if row["method"] == method and test(row)]


def acceptance(rows: list[dict]) -> list[dict]:
    checks = []

    def check(target, row, conditions):
        checks.append({"target": target, "variant": row["name"], "passed": all(ok for _, ok in conditions),
                       "conditions": {name: bool(ok) for name, ok in conditions}})

    for row in _matching(rows, "ptq", lambda r: r["name"] == "ptq-dynamic"):
        check("dynamic-range TFLite: >= 3.5x smaller, >= 3x faster at batch 1, drop <= 0.5 point", row,
              [("smaller >= 3.5x", row["smaller_x"] >= 3.5), ("p50 speedup >= 3x", row["speedup_p50_x"] >= 3),
               ("drop <= 0.5", row["accuracy_delta_points"] >= -0.5)])
    for row in _matching(rows, "prune", lambda r: r["notes"].get("structure") == "unstructured"
                         and abs(float(r["notes"].get("target_sparsity", 0)) - 0.8) < 1e-6):
        check("80% unstructured sparsity: drop <= 1.5 points, gzip >= 3x smaller", row,
              [("drop <= 1.5", row["accuracy_delta_points"] >= -1.5), ("gzip >= 3x", row["gzip_smaller_x"] >= 3)])
    for row in _matching(rows, "qat"):
        check("QAT int8: drop <= 1 point", row, [("drop <= 1", row["accuracy_delta_points"] >= -1)])
    for row in _matching(rows, "distill"):
        layers, teacher = row["notes"].get("student_layers"), row["notes"].get("teacher_layers")
        conditions = [("p50 speedup >= 2x", row["speedup_p50_x"] >= 2), ("drop <= 2", row["accuracy_delta_points"] >= -2)]
        if layers is not None and teacher is not None:
            conditions.insert(0, ("<= half the layers", 2 * layers <= teacher))
        check("distilled student: >= 2x faster, drop <= 2 points", row, conditions)
    return checks


# === Outputs ===

def mb(value: int) -> str:
    return f"{value / 1e6:.2f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| variant | accuracy | Δ acc (pts) | macro-F1 | Δ F1 (pts) | size MB | gzip MB | smaller | p50 ms | "
             "p99 ms | speedup p50 | batch-32 ex/s | params | sparsity |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = f"{r['params']:,}" if r["params"] else "–"
        sparsity = f"{r['sparsity']:.1%}" if r["sparsity"] is not None else "–"
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} | {r['accuracy_delta_points']:+.2f} | {r['macro_f1']:.4f} | "
                     f"{r['macro_f1_delta_points']:+.2f} | {mb(r['bytes'])} | {mb(r['gzip_bytes'])} | "
                     f"{r['smaller_x']}× (gzip {r['gzip_smaller_x']}×) | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['speedup_p50_x']}× | {r['examples_per_s']} | {params} | {sparsity} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> Path:
    """Accuracy vs. batch-1 p50 latency; marker area proportional to the on-disk size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    largest = max(r["bytes"] for r in rows)
    methods = sorted({r["method"] for r in rows})
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    for r in rows:
        ax.scatter(r["p50_ms"], 100 * r["accuracy"], s=40 + 1500 * r["bytes"] / largest, alpha=0.6,
                   color=colors[r["method"]], edgecolors="black", linewidths=0.5)
        ax.annotate(f"{r['name']} ({mb(r['bytes'])} MB)", (r["p50_ms"], 100 * r["accuracy"]), fontsize=8,
                    xytext=(6, 4), textcoords="offset points")
    for m in methods:
        ax.scatter([], [], color=colors[m], label=m)
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency p50 (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", title="marker size = file size", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_tensorboard(directory: Path, markdown: str, png: Path) -> None:
    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default(step=0):
        tf.summary.text("compression_report", markdown)
        tf.summary.image("accuracy_vs_latency", tf.image.decode_png(png.read_bytes(), channels=4)[None])
    writer.close()


# === Export into the model repository ===

def export_variant(variant: Variant, context: CompressContext) -> dict:
    """<repo>/<name>-<variant>/<version>/: raw-string signatures as models/export.py writes them. A TFLite variant's
    version holds the float32 baseline SavedModel (the server needs one to find the version) and its raw-string
    model.tflite, which `moat serve --prefer_tflite_model` serves instead."""
    from moatkit.models.export import (CLASSIFY_METHOD, TFLITE_FILE, ExportConfig, TextModelModule, export_text_model,
                                       save_signatures, set_method_names, write_version, write_warmup)

    name = f"{context.config.name}-{variant.name}"
    if variant.hf_dir is not None and variant.tflite_path is None:
        info = export_text_model(ExportConfig(model_dir=str(variant.hf_dir), repo=context.config.repo, name=name,
                                              max_length=context.max_length))
        return {"model_name": name, "version_dir": info["version_dir"], "format": "saved_model"}
    from moatkit.models.compress.ptq import WithLogits

    if variant.tflite_path is not None:
        model, serving = context.load_baseline(), variant.serving_tflite
        if serving is None:
            raise ConfigError(f"TFLite variant '{variant.name}' has no raw-string flatbuffer (serving_tflite)",
                              fix="build one with models.compress.ptq.raw_string_tflite")
        serving = serving() if callable(serving) else serving
    else:
        model, serving = variant.model, None
    module = TextModelModule(model=WithLogits(model), vocab=context.vocab, labels=context.labels,
                             max_length=context.max_length, lower_case=context.task.get("lower_case", True))
    signatures = module.signatures()

    def write(staging: Path) -> None:
        save_signatures(module, staging, signatures)
        set_method_names(staging, {"classify": CLASSIFY_METHOD})
        write_warmup(staging, name)
        if serving is not None:
            (staging / TFLITE_FILE).write_bytes(serving)

    final, version, _ = write_version(Path(context.config.repo) / name, None, write)
    return {"model_name": name, "version_dir": str(final), "format": "tflite" if serving is not None else "saved_model"}


# === The run ===

def run_compress(config: CompressConfig, *, log=print, serve_check: Callable | None = None) -> dict:
    """Compresses, evaluates and (with config.export) exports every variant, then writes the report.
    `serve_check(exports, texts, expected, work_dir)` serves the exports and asks them (moatkit.app.compress_report
    passes one that starts moat-model-server); without it, config.serve_check is skipped."""
    started = time.time()
    config.validate()
    context = load_context(config)
    modules = {method: method_module(method) for method in config.selected_methods()}  # fail before any work
    baseline = context.load_baseline()
    variants = [Variant(name="float32", method="baseline", model=baseline, hf_dir=context.model_dir,
                        notes={"model_dir": str(context.model_dir)})]
    method_seconds = {}
    for method, module in modules.items():
        tick = time.time()
        log(f"compress: {method} …")
        produced = module.compress(context, getattr(config, method))
        method_seconds[method] = round(time.time() - tick, 1)
        names = {v.name for v in variants}
        for variant in produced:
            if variant.name in names:
                raise ConfigError(f"two variants are named '{variant.name}'", fix=f"rename one in {method}")
        variants.extend(produced)
    for variant in variants:
        prepare(variant, context)

    load_start = round(os.getloadavg()[0], 2)
    rows = []
    for variant in variants:
        row = evaluate(variant, context)
        row.update(time_predict(variant.predict, context.arrays["test"], repeats=config.latency_repeats,
                                batches=config.throughput_batches, warmup=config.warmup_calls))
        rows.append(row)
        log(f"  {row['name']}: accuracy {row['accuracy']:.4f}, {mb(row['bytes'])} MB, p50 {row['p50_ms']} ms")
    add_deltas(rows)
    load_end = round(os.getloadavg()[0], 2)

    out = context.out_dir
    exports, served = {}, {}
    if config.export:
        for variant in variants:
            exports[variant.name] = export_variant(variant, context)
            next(r for r in rows if r["name"] == variant.name)["export"] = exports[variant.name]
        if config.serve_check and serve_check is not None:
            texts = context.texts["test"][:8]
            first = context.batch("test", slice(0, len(texts)))
            expected = {v.name: [context.labels[i] for i in v.predict(first).argmax(-1)] for v in variants}
            served = serve_check(exports, texts, expected, out / "serve_check")
            for row in rows:
                row["served"] = served.get(row["name"])

    markdown = markdown_table(rows)
    png = plot(rows, out / "report.png", f"{context.task.get('name', 'task')}: accuracy vs. latency "
                                         f"({len(context.targets['test'])} test examples)")
    checks = acceptance(rows)
    report = {"config": dataclasses.asdict(config), "model_dir": str(context.model_dir),
              "split_dir": str(context.split_dir), "labels": context.labels, "max_length": context.max_length,
              "sizes": {name: int(len(t)) for name, t in context.targets.items()},
              "machine": {"cpu_count": os.cpu_count(), "load_average_1m": {"start": load_start, "end": load_end}},
              "variants": rows, "acceptance": checks, "served": served, "method_seconds": method_seconds,
              "total_seconds": round(time.time() - started, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    check_lines = [f"- {'PASS' if c['passed'] else 'FAIL'} {c['target']} ({c['variant']}: "
                   + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in c["conditions"].items()) + ")"
                   for c in checks]
    serve_line = ""
    if served:
        ok = [name for name, r in served.items() if r["rest"] and r["grpc"] and r["rest_equals_grpc"]]
        serve_line = (f"Served from the model repository ({config.repo}) by moat-model-server --prefer_tflite_model: "
                      f"{len(ok)}/{len(served)} variants answered REST and gRPC identically.\n")
    text = (f"{markdown}\nTest split: {len(context.targets['test'])} examples; inputs padded to {context.max_length} "
            f"tokens; {os.cpu_count()} CPUs, load average {load_start} → {load_end}.\n"
            + serve_line + ("\n" + "\n".join(check_lines) + "\n" if check_lines else ""))
    (out / "report.md").write_text(text)
    write_tensorboard(out / "tensorboard", text, png)
    log(text)
    log(f"report: {out / 'report.json'}, {out / 'report.md'}, {png}; TensorBoard: tensorboard --logdir "
        f"{out / 'tensorboard'}")
    return report


# The settings measured to meet the compression issue's pruning and distillation targets on the MR MiniLM baseline
# (docs/results.md, compression): the defaults fit any model (the tiny test model is 98 % word embeddings), these fit MiniLM.
def mr_recipes() -> dict:
    return {"prune": PruneSettings(structure=["unstructured"], epochs=4, learning_rate=1e-4, embedding_sparsity=0.9,
                                   drop_unseen_tokens=True, teacher_alpha=0.7),
            "distill": DistillSettings(student_layers=2, unlabeled="amazon")}
