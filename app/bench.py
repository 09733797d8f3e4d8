"""`moat bench`: side-by-side measurements in one run (ours vs. the reference path), written as JSON + markdown.

- tokenize: the exported model's in-graph tokenizer (tf.text, inside tf.function) vs HF BertTokenizerFast.
- serve: REST vs gRPC single-sentence latency against moat-model-server, when a model repository exists.
- finetune: our recipe (length-grouped dynamic padding, AdamW, warm-up) vs the naive one (pad every sentence to
  max_length, `model.fit` on padded arrays, Adam with linear decay) on the same model, data and epochs.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

from app.errors import ConfigError
from app.pipeline import percentile
from models.finetune import resolve_model_dir


@dataclasses.dataclass
class BenchConfig:
    model: str = "minilm-l6"  # tokenizer source: catalog name or model dir
    data: str = "mr"
    batch_size: int = 32
    max_length: int = 64
    repeats: int = 5
    model_base_path: str = "artifacts/models/sentiment"  # serve bench runs when this holds a version
    model_name: str = "sentiment"
    requests: int = 200
    finetune_examples: int | None = 3000  # MR train sentences for the fine-tune bench (null = all 7,398)
    finetune_epochs: int = 2
    benchmarks: list[str] = dataclasses.field(default_factory=lambda: ["tokenize", "serve", "finetune"])
    out_dir: str = "bench/results"

    def validate(self):
        unknown = set(self.benchmarks) - {"tokenize", "serve", "finetune"}
        if unknown:
            raise ConfigError(f"config key 'benchmarks' has unknown entries {sorted(unknown)}",
                              fix="choose from tokenize, serve, finetune")
        if self.requests < 20 or self.repeats < 1 or self.batch_size < 1:
            raise ConfigError("bench needs requests >= 20, repeats >= 1 and batch_size >= 1",
                              fix="e.g. --set requests=200")


def _best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return min(times)


def bench_tokenize(config: BenchConfig) -> dict:
    import tensorflow as tf
    from transformers import BertTokenizerFast

    from data.dataset import read_records
    from data.fetch import fetch
    from serving.text_tokenizer import InGraphBertTokenizer

    model_dir = resolve_model_dir(config.model)
    texts = [r["text"] for r in read_records(fetch(config.data))]
    batches = [texts[i:i + config.batch_size] for i in range(0, len(texts), config.batch_size)]
    hf = BertTokenizerFast.from_pretrained(model_dir)
    ours = InGraphBertTokenizer(vocab=(model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines(),
                                max_length=config.max_length, lower_case=bool(hf.do_lower_case))
    graph = tf.function(ours, input_signature=[tf.TensorSpec([None], tf.string)])
    tensors = [tf.constant(b) for b in batches]
    graph(tensors[0])  # trace once
    ours_s = _best_of(config.repeats, lambda: [graph(t) for t in tensors])
    hf_s = _best_of(config.repeats, lambda: [hf(b, truncation=True, max_length=config.max_length, padding=True,
                                                return_tensors="np") for b in batches])
    return {"sentences": len(texts), "batch_size": config.batch_size,
            "ours_sentences_per_s": round(len(texts) / ours_s), "hf_fast_sentences_per_s": round(len(texts) / hf_s),
            "ratio_ours_over_hf": round(hf_s / ours_s, 3)}


def bench_serve(config: BenchConfig) -> dict | None:
    import numpy as np

    from serving import client
    from serving.process import ServerProcess

    base = Path(config.model_base_path)
    if not any(p.name.isdigit() for p in base.glob("*")):
        return None
    sentence = ["a wonderful, moving film"]
    with ServerProcess(model_name=config.model_name, model_base_path=base) as server:
        client.wait_until_available(config.model_name, rest=server.rest_address, timeout=120)
        timings = {"rest": [], "grpc": []}
        # Both clients behave as long-lived ones: urllib keeps no connection, so REST pays a TCP connect per call
        # (as curl does); gRPC reuses one channel (as a serving client does).
        with client.open_channel(server.grpc_address) as channel:
            for i in range(config.requests):
                tick = time.perf_counter()
                client.rest_predict(server.rest_address, config.model_name, sentence)
                timings["rest"].append((time.perf_counter() - tick) * 1000)
                tick = time.perf_counter()
                client.grpc_predict(server.grpc_address, config.model_name,
                                    {"text": np.array(sentence, dtype=object)}, channel=channel)
                timings["grpc"].append((time.perf_counter() - tick) * 1000)
    result = {"requests": config.requests}
    for name, values in timings.items():
        values = values[5:]  # the first calls include warm-up of both paths
        result[f"{name}_p50_ms"] = round(statistics.median(values), 2)
        result[f"{name}_p99_ms"] = round(percentile(values, 0.99), 2)
    result["ratio_grpc_over_rest_p50"] = round(result["rest_p50_ms"] / result["grpc_p50_ms"], 3)
    return result


def bench_finetune(config: BenchConfig, work_dir: Path) -> dict:
    """Both recipes in one process, one after the other, on the same sampled train sentences and test split."""
    import numpy as np
    import tensorflow as tf
    from transformers import BertTokenizerFast, TFBertForSequenceClassification

    from models.finetune import FinetuneConfig, finetune, load_task_data
    from models.tasks import get_task

    ours_config = FinetuneConfig(model=config.model, run_dir=str(work_dir / "ours"), epochs=config.finetune_epochs,
                                 max_length=config.max_length, batch_size=config.batch_size,
                                 max_train_examples=config.finetune_examples, patience=config.finetune_epochs)
    _, splits, labels = load_task_data(ours_config, get_task(ours_config.task))
    model_dir = resolve_model_dir(config.model)
    tokenizer = BertTokenizerFast.from_pretrained(model_dir)

    def padded(texts):
        return dict(tokenizer(texts, padding="max_length", truncation=True, max_length=config.max_length,
                              return_tensors="np"))

    index = {name: i for i, name in enumerate(labels)}
    y_train = np.array([index[t] for t in splits["train"][2]], np.int32)
    y_test = np.array([index[t] for t in splits["test"][2]], np.int32)
    tf.keras.utils.set_random_seed(ours_config.seed)
    naive = TFBertForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    steps = int(np.ceil(len(y_train) / config.batch_size)) * config.finetune_epochs
    naive.compile(optimizer=tf.keras.optimizers.Adam(tf.keras.optimizers.schedules.PolynomialDecay(5e-5, steps, 0.0)),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x_train = padded(splits["train"][0])
    tick = time.time()
    naive.fit(x_train, y_train, batch_size=config.batch_size, epochs=config.finetune_epochs, shuffle=True, verbose=0)
    naive_seconds = time.time() - tick
    naive_logits = naive.predict(padded(splits["test"][0]), batch_size=128, verbose=0).logits
    naive_accuracy = float((naive_logits.argmax(-1) == y_test).mean())
    del naive

    report = finetune(ours_config, verbose=0)
    examples = len(y_train) * config.finetune_epochs
    naive_rate = examples / naive_seconds
    ours_rate = report["timings"]["train_examples_per_second"]
    return {"train_examples": len(y_train), "epochs": config.finetune_epochs, "test_examples": len(y_test),
            "naive_examples_per_s": round(naive_rate, 1), "ours_examples_per_s": ours_rate,
            "naive_test_accuracy": round(naive_accuracy, 4), "ours_test_accuracy": round(report["test"]["accuracy"], 4),
            "ratio_ours_over_naive": round(ours_rate / naive_rate, 3)}


def run_bench(config: BenchConfig, *, log=print) -> dict:
    import tempfile

    results = {"tokenize": bench_tokenize(config) if "tokenize" in config.benchmarks else None,
               "serve": bench_serve(config) if "serve" in config.benchmarks else None,
               "finetune": None}
    if "finetune" in config.benchmarks:
        with tempfile.TemporaryDirectory(prefix="moat-bench-") as tmp:
            results["finetune"] = bench_finetune(config, Path(tmp))
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    lines = ["| benchmark | ours | reference | ratio (>1 = ours faster) |", "|---|---|---|---|"]
    if t := results["tokenize"]:
        lines.append(f"| tokenize, batch {t['batch_size']} (sentences/s) | in-graph tf.text: "
                     f"{t['ours_sentences_per_s']} | HF BertTokenizerFast: {t['hf_fast_sentences_per_s']} "
                     f"| {t['ratio_ours_over_hf']} |")
    if f := results["finetune"]:
        lines.append(f"| fine-tune MiniLM on {f['train_examples']} MR sentences × {f['epochs']} epochs "
                     f"(train examples/s; test accuracy on {f['test_examples']}) | ours: {f['ours_examples_per_s']}; "
                     f"{f['ours_test_accuracy']} | naive padded recipe: {f['naive_examples_per_s']}; "
                     f"{f['naive_test_accuracy']} | {f['ratio_ours_over_naive']} |")
    if s := results["serve"]:
        lines.append(f"| predict 1 sentence, p50 ms | gRPC: {s['grpc_p50_ms']} | REST: {s['rest_p50_ms']} "
                     f"| {s['ratio_grpc_over_rest_p50']} |")
    elif "serve" in config.benchmarks:
        lines.append(f"| predict 1 sentence | skipped: no model under {config.model_base_path} (run `make demo`) | | |")
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))
    log(f"results: {out / 'bench.json'}")
    return results
