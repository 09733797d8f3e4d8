"""`moat bench`: side-by-side measurements in one run (ours vs. the reference path), written as JSON + markdown.

- tokenize: the exported model's in-graph tokenizer (tf.text, inside tf.function) vs HF BertTokenizerFast.
- serve: the exported model behind moat-model-server, when a model repository exists: p50/p99 latency at 1 client
  and throughput at 1/8/32 concurrent clients, REST and gRPC, with batching off and on (app/loadgen.py),
  against the in-process reference (the loaded SavedModel's serving_default called directly). The full table also
  goes to serving.json / serving.md.
- finetune: our recipe (length-grouped dynamic padding, AdamW, warm-up) vs the naive one (pad every sentence to
  max_length, `model.fit` on padded arrays, Adam with linear decay) on the same model, data and epochs.
- data: cleaning + near-dup throughput on the catalog text sets; transformer: our seq2seq vs tf.keras MHA.
- pretrain: one BERT pretraining step (4L/256H, float32) of ours vs HF TFBertForPreTraining, with model-FLOPs
  utilisation against a matmul peak measured in the same run (models/bert_bench.py).
- compress: the MR compression report of runs/sentiment/model (models/compress/report.py).
- monitor: the drift scenario (MR → amazon / nyt) through the served model's request logs (app/bench_monitor.py).
- support: the Python-FAQ assistant's quality, chat-turn latency at 1 and 16 sessions, ScaNN vs brute force
  (app/bench_support.py).
- opinion: general vs finance sentiment on the gold set (3 seeds), spike detection delay and false alarms on a
  replayed background, texts/s in-process vs served vs Beam (app/bench_opinion.py).
- recommend: the sequential recommender vs tuned most-popular / item-kNN / ALS on MovieLens 100K (3 seeds, full
  ranking), top-10 latency in-process vs REST vs gRPC (app/bench_recommend.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from moatkit.data.core.errors import ConfigError
from moatkit.models.finetune import resolve_model_dir


BENCHMARKS = ("tokenize", "serve", "finetune", "data", "transformer", "pretrain", "compress", "monitor", "support",
              "opinion", "recommend")


@dataclasses.dataclass
class BenchConfig:
    model: str = "minilm-l6"  # tokenizer source: catalog name or model dir
    data: str = "mr"
    batch_size: int = 32
    max_length: int = 64
    repeats: int = 5
    model_base_path: str = "artifacts/models/sentiment"  # serve bench runs when this holds a version
    model_name: str = "sentiment"
    serve_sentence: str = "a wonderful, moving film"
    serve_seconds: float = 4.0  # measured window per point (after each client's 2 warm-up calls)
    serve_warmup_seconds: float = 3.0  # untimed single-client load before the first point of each engine
    serve_clients: list[int] = dataclasses.field(default_factory=lambda: [1, 8, 32])
    serve_batching: list[bool] = dataclasses.field(default_factory=lambda: [False, True])
    # Text BatchingParameters for the batching-on server. One batch thread: on 2 cores a second concurrent batch
    # only competes for the same cores. No allowed_batch_sizes: with dynamic shapes padding would only add rows.
    # 5 ms instead of 2 ms: +12-15% throughput at 32 clients (larger batches), measured twice each.
    batching_parameters: str = ("max_batch_size { value: 32 } batch_timeout_micros { value: 5000 } "
                                "num_batch_threads { value: 1 } max_enqueued_batches { value: 64 }")
    finetune_examples: int | None = None  # MR train sentences for the fine-tune bench (null: all 7,398, ≈13 min)
    finetune_epochs: int = 2
    data_max_records: int | None = None  # per catalog source in the clean+dedup bench (null = everything, 32.5 MB)
    benchmarks: list[str] = dataclasses.field(default_factory=lambda: list(BENCHMARKS))
    out_dir: str = "bench/results"

    def validate(self):
        unknown = set(self.benchmarks) - set(BENCHMARKS)
        if unknown:
            raise ConfigError(f"config key 'benchmarks' has unknown entries {sorted(unknown)}",
                              fix=f"choose from {', '.join(BENCHMARKS)}")
        if self.repeats < 1 or self.batch_size < 1:
            raise ConfigError("bench needs repeats >= 1 and batch_size >= 1", fix="e.g. --set repeats=5")
        if self.serve_seconds <= 0 or self.serve_warmup_seconds <= 0 or not self.serve_clients or min(
                self.serve_clients) < 1:
            raise ConfigError("config keys 'serve_seconds' and 'serve_warmup_seconds' must be > 0 and "
                              "'serve_clients' a list of counts >= 1",
                              fix="e.g. --set serve_seconds=4 --set 'serve_clients=[1,8,32]'")
        if not self.serve_batching:
            raise ConfigError("config key 'serve_batching' is empty", fix="use [false, true]")


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

    from moatkit.data.dataset import read_records
    from moatkit.data.fetch import fetch
    from moatkit.data.text_tokenizer import InGraphBertTokenizer

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
    """Every point runs for serve_seconds with closed-loop clients (app/loadgen.py); one server per batching
    mode, both protocols against the same server."""
    import tempfile

    import numpy as np
    import tensorflow as tf

    from moatkit.app import loadgen
    from moatkit.serving import client
    from moatkit.serving.process import ServerProcess

    base = Path(config.model_base_path)
    versions = sorted((int(p.name), p) for p in base.glob("*") if p.name.isdigit() and p.is_dir())
    if not versions:
        return None
    sentence = [config.serve_sentence]
    load_start = round(os.getloadavg()[0], 2)  # the machine's other load, reported next to the numbers

    def measure(make_call, clients):
        return loadgen.run_load(make_call, clients=clients, seconds=config.serve_seconds).summary()

    def prime(make_call):
        """A freshly loaded model answers 2-4x slower for its first few dozen calls (measured), so every engine
        gets the same untimed warm-up before its first measured point."""
        loadgen.run_load(make_call, clients=1, seconds=config.serve_warmup_seconds)

    signature = tf.saved_model.load(str(versions[-1][1])).signatures["serving_default"]
    reference = loadgen.in_process_client(signature, {"text": sentence})
    prime(reference)
    in_process = measure(reference, 1)
    del signature, reference

    points = []
    with tempfile.TemporaryDirectory(prefix="moat-bench-serve-") as tmp:
        params_file = Path(tmp) / "batching_parameters.txt"
        params_file.write_text(config.batching_parameters)
        for batching in config.serve_batching:
            # gRPC handler threads cap the concurrent requests (and so the batch sizes); TF Serving's gRPC server
            # has no such cap, so allow one per client.
            flags = [f"--grpc_max_threads={max(max(config.serve_clients), 16)}"]
            if batching:
                flags += ["--enable_batching", f"--batching_parameters_file={params_file}"]
            with ServerProcess(model_name=config.model_name, model_base_path=base, extra_flags=tuple(flags)) as server:
                client.wait_until_available(config.model_name, rest=server.rest_address, timeout=120)
                makers = {"rest": loadgen.rest_client(server.rest_address, config.model_name, sentence),
                          "grpc": loadgen.grpc_client(server.grpc_address, config.model_name,
                                                      {"text": np.array(sentence, dtype=object)})}
                prime(makers["grpc"])
                for protocol, make_call in makers.items():
                    for clients in config.serve_clients:
                        points.append({"protocol": protocol, "batching": batching, **measure(make_call, clients)})

    def point(protocol, batching, clients):
        return next((p for p in points if (p["protocol"], p["batching"], p["clients"]) == (protocol, batching,
                                                                                              clients)), None)

    result = {"model": str(versions[-1][1]), "sentence": config.serve_sentence, "seconds_per_point": config.serve_seconds,
              "batching_parameters": config.batching_parameters, "cpu_count": os.cpu_count(),
              "load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
              "in_process": in_process, "points": points}
    single = {proto: point(proto, False, 1) or point(proto, True, 1) for proto in ("rest", "grpc")}
    for proto, p in single.items():
        if p and p["p50_ms"]:
            result[f"{proto}_p50_ms"], result[f"{proto}_p99_ms"] = p["p50_ms"], p["p99_ms"]
            result[f"{proto}_p50_over_in_process"] = round(p["p50_ms"] / in_process["p50_ms"], 3)
    most = max(config.serve_clients)
    for proto in ("rest", "grpc"):
        on, off = point(proto, True, most), point(proto, False, most)
        if on and off and off["req_per_s"]:
            result[f"{proto}_batching_speedup_at_{most}"] = round(on["req_per_s"] / off["req_per_s"], 3)
    return result


def _serve_rows(s: dict) -> list[str]:
    """The summary rows for bench.md."""
    ref = s["in_process"]
    rows = []
    if "grpc_p50_ms" in s:
        rows.append(f"| predict 1 sentence, 1 client, p50 ms | gRPC: {s['grpc_p50_ms']} (p99 {s['grpc_p99_ms']}); "
                    f"REST: {s['rest_p50_ms']} (p99 {s['rest_p99_ms']}) | in-process signature call: "
                    f"{ref['p50_ms']} (p99 {ref['p99_ms']}) | gRPC {round(ref['p50_ms'] / s['grpc_p50_ms'], 3)}; "
                    f"REST {round(ref['p50_ms'] / s['rest_p50_ms'], 3)} |")
    for key, value in s.items():
        if "_batching_speedup_at_" in key:
            proto, clients = key.split("_")[0], key.rsplit("_", 1)[1]
            on = next(p for p in s["points"] if p["protocol"] == proto and p["batching"] and p["clients"] == int(clients))
            off = next(p for p in s["points"] if p["protocol"] == proto and not p["batching"]
                       and p["clients"] == int(clients))
            rows.append(f"| {'gRPC' if proto == 'grpc' else 'REST'} throughput, {clients} clients (req/s) | "
                        f"batching on: {on['req_per_s']} | batching off: {off['req_per_s']} | {value} |")
    return rows


def serving_table(s: dict) -> str:
    lines = ["| path | batching | clients | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    ref = s["in_process"]
    lines.append(f"| in-process signature call | – | 1 | {ref['req_per_s']} | {ref['p50_ms']} | {ref['p99_ms']} | "
                 f"{ref['errors']} |")
    for p in s["points"]:
        lines.append(f"| {'gRPC' if p['protocol'] == 'grpc' else 'REST'} | {'on' if p['batching'] else 'off'} | "
                     f"{p['clients']} | {p['req_per_s']} | {p['p50_ms']} | {p['p99_ms']} | {p['errors']} |")
    return "\n".join(lines) + "\n"


def _naive_recipe(model_dir: str, train: tuple[list[str], list[int]], test: tuple[list[str], list[int]], *,
                  labels: int, batch_size: int, max_length: int, epochs: int, seed: int) -> dict:
    """The textbook recipe: every sentence padded to max_length, Adam with linear decay, `model.fit` on arrays."""
    import numpy as np
    import tensorflow as tf
    from transformers import BertTokenizerFast, TFBertForSequenceClassification

    tokenizer = BertTokenizerFast.from_pretrained(model_dir)

    def padded(texts):
        return dict(tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                              return_tensors="np"))

    tf.keras.utils.set_random_seed(seed)
    model = TFBertForSequenceClassification.from_pretrained(model_dir, num_labels=labels)
    steps = int(np.ceil(len(train[1]) / batch_size)) * epochs
    model.compile(optimizer=tf.keras.optimizers.Adam(tf.keras.optimizers.schedules.PolynomialDecay(5e-5, steps, 0.0)),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x_train = padded(train[0])
    tick = time.time()
    model.fit(x_train, np.array(train[1], np.int32), batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    seconds = time.time() - tick
    logits = model.predict(padded(test[0]), batch_size=128, verbose=0).logits
    return {"seconds": seconds, "accuracy": float((logits.argmax(-1) == np.array(test[1])).mean())}


def _in_fresh_process(fn, *args, **kwargs):
    """Runs fn in a new Python process, so each recipe starts from a clean TensorFlow runtime: run second in the
    naive recipe's process, ours trained at 56.5 examples/s, against 65.9 in a fresh one (full MR train, 2 epochs)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def bench_finetune(config: BenchConfig, work_dir: Path) -> dict:
    """Both recipes on the same sampled train sentences and test split, one after the other, each in a fresh
    process."""
    from moatkit.models.finetune import FinetuneConfig, finetune, load_task_data
    from moatkit.models.tasks import get_task

    ours_config = FinetuneConfig(model=config.model, run_dir=str(work_dir / "ours"), epochs=config.finetune_epochs,
                                 max_length=config.max_length, batch_size=config.batch_size,
                                 max_train_examples=config.finetune_examples, patience=config.finetune_epochs)
    _, splits, labels = load_task_data(ours_config, get_task(ours_config.task))
    index = {name: i for i, name in enumerate(labels)}
    train = (splits["train"][0], [index[t] for t in splits["train"][2]])
    test = (splits["test"][0], [index[t] for t in splits["test"][2]])
    naive = _in_fresh_process(_naive_recipe, str(resolve_model_dir(config.model)), train, test, labels=len(labels),
                              batch_size=config.batch_size, max_length=config.max_length,
                              epochs=config.finetune_epochs, seed=ours_config.seed)
    report = _in_fresh_process(finetune, ours_config, verbose=0)
    examples = len(train[1]) * config.finetune_epochs
    naive_rate = examples / naive["seconds"]
    ours_rate = report["timings"]["train_examples_per_second"]
    return {"train_examples": len(train[1]), "epochs": config.finetune_epochs, "test_examples": len(test[1]),
            "naive_examples_per_s": round(naive_rate, 1), "ours_examples_per_s": ours_rate,
            "naive_test_accuracy": round(naive["accuracy"], 4),
            "ours_test_accuracy": round(report["test"]["accuracy"], 4),
            "ours_precision": report["config"]["precision"],
            "ratio_ours_over_naive": round(ours_rate / naive_rate, 3)}


def _bench_rows(stored: dict) -> list[str]:
    """bench.md's rows up to the serving ones, from the stored results (this run's and the kept ones)."""
    lines = ["| benchmark | ours | reference | ratio (>1 = ours faster) |", "|---|---|---|---|"]
    if t := stored["tokenize"]:
        lines.append(f"| tokenize, batch {t['batch_size']} (sentences/s) | in-graph tf.text: "
                     f"{t['ours_sentences_per_s']} | HF BertTokenizerFast: {t['hf_fast_sentences_per_s']} "
                     f"| {t['ratio_ours_over_hf']} |")
    if f := stored["finetune"]:
        precision = f" ({f['ours_precision']})" if f.get("ours_precision") else ""
        lines.append(f"| fine-tune MiniLM on {f['train_examples']} MR sentences × {f['epochs']} epochs "
                     f"(train examples/s; test accuracy on {f['test_examples']}) | ours{precision}: "
                     f"{f['ours_examples_per_s']}; "
                     f"{f['ours_test_accuracy']} | naive padded recipe: {f['naive_examples_per_s']}; "
                     f"{f['naive_test_accuracy']} | {f['ratio_ours_over_naive']} |")
    if d := stored.get("data"):
        both = d["clean_dedup"]
        lines.append(f"| clean + dedup {d['documents']:,} docs / {d['megabytes']} MB of catalog text (per CPU-second "
                     f"= per core) | {both['docs_per_s_per_core']:,} docs/s, {both['mb_per_s_per_core']} MB/s | | |")
    if m := stored.get("transformer"):
        for key, label in (("train_tokens_per_second", "train tokens/s"),
                           ("greedy_sentences_per_second", "greedy decode sentences/s"),
                           ("beam_sentences_per_second", f"beam-{m['beam_size']} decode sentences/s")):
            lines.append(f"| Transformer {label} (batch {m['batch']}) | ours: {m['ours'][key]} | "
                         f"tf.keras MultiHeadAttention: {m['keras_mha'][key]} | {m[f'ratio_{key}']} |")
    if p := stored.get("pretrain"):
        lines.append(f"| BERT pretraining step {p['config']['num_layers']}L/{p['config']['hidden_size']}H, batch "
                     f"{p['batch_size']} × {p['seq_length']} (tokens/s; MFU vs a {p['matmul_peak_tflops']} TFLOP/s "
                     f"matmul) | ours: {p['ours']['tokens_per_second']}; {p['ours']['mfu']:.1%} | HF "
                     f"TFBertForPreTraining: {p['hf']['tokens_per_second']}; {p['hf']['mfu']:.1%} | "
                     f"{p['ratio_tokens_per_second_ours_vs_hf']} |")
    if c := stored.get("compress"):
        lines += c["bench_rows"]
    if u := stored.get("support"):
        from moatkit.app.bench_support import support_rows
        lines += support_rows(u)
    if o := stored.get("opinion"):
        from moatkit.app.bench_opinion import opinion_rows
        lines += ["", *opinion_rows(o)]
    if r := stored.get("recommend"):
        from moatkit.app.bench_recommend import recommend_rows
        lines += ["", *recommend_rows(r)]
    return lines


def run_bench(config: BenchConfig, *, log=print) -> dict:
    import tempfile

    results = {"tokenize": bench_tokenize(config) if "tokenize" in config.benchmarks else None,
               "serve": bench_serve(config) if "serve" in config.benchmarks else None,
               "finetune": None, "data": None, "transformer": None}
    if "finetune" in config.benchmarks:
        with tempfile.TemporaryDirectory(prefix="moat-bench-") as tmp:
            results["finetune"] = bench_finetune(config, Path(tmp))
    if "data" in config.benchmarks:
        from moatkit.data.bench import bench_clean_dedup
        results["data"] = bench_clean_dedup(max_records=config.data_max_records)
    if "transformer" in config.benchmarks:
        from moatkit.models.seq2seq.bench import bench_transformer
        results["transformer"] = bench_transformer()
    results["pretrain"] = None  # BERT pretraining step: ours vs HF TFBertForPreTraining, MFU (models/bert_bench.py)
    if "pretrain" in config.benchmarks:
        from moatkit.models.bert_bench import run_pretrain_bench
        results["pretrain"] = run_pretrain_bench()
    results["compress"] = None  # the MR compression report of runs/sentiment/model (models/compress/report.py)
    if "compress" in config.benchmarks:
        from moatkit.app.compress_report import bench_compress
        results["compress"] = bench_compress(out_dir=str(Path(config.out_dir) / "compress"), log=log)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results["monitor"] = None  # drift scenario through the served model's logs (app/bench_monitor.py)
    if "monitor" in config.benchmarks:
        from moatkit.app.bench_monitor import MonitorBench, run_monitor_bench
        results["monitor"] = run_monitor_bench(MonitorBench(model_base_path=config.model_base_path,
                                                            model_name=config.model_name), out, log=log)
    results["support"] = None
    if "support" in config.benchmarks:
        from moatkit.app.bench_support import SupportBench, run_support_bench
        results["support"] = run_support_bench(SupportBench(out=str(out / "support")), log=log)
    results["opinion"] = None
    if "opinion" in config.benchmarks:
        from moatkit.app.bench_opinion import OpinionBench, run_opinion_bench
        results["opinion"] = run_opinion_bench(OpinionBench(out=str(out / "opinion"), repo=str(out / "opinion" / "models")),
                                               log=log)
    results["recommend"] = None
    if "recommend" in config.benchmarks:
        from moatkit.app.bench_recommend import RecommendBench, run_recommend_bench
        results["recommend"] = run_recommend_bench(RecommendBench(out=str(out / "recommend")), log=log)
    # A run of some benchmarks keeps the last results of the others (e.g. `--set 'benchmarks=[serve]'`).
    previous = json.loads((out / "bench.json").read_text()) if (out / "bench.json").is_file() else {}
    stored = {name: value if name in config.benchmarks else previous.get(name) for name, value in results.items()}
    (out / "bench.json").write_text(json.dumps(stored, indent=2))
    lines = _bench_rows(stored)
    if (s := stored["serve"]) and "in_process" in s:  # older runs stored another shape
        lines += _serve_rows(s)
    if results["serve"]:
        (out / "serving.json").write_text(json.dumps(results["serve"], indent=2))
        (out / "serving.md").write_text(serving_table(results["serve"]))
    if "serve" in config.benchmarks and not results["serve"]:
        lines.append(f"| predict 1 sentence | skipped: no model under {config.model_base_path} (run `make demo`) | | |")
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))
    if results["serve"]:
        log(serving_table(results["serve"]))
    log(f"results: {out / 'bench.json'}")
    return results
