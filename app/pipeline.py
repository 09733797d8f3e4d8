"""`moat demo`: fetch → split → fine-tune → evaluate → export → serve → query over REST and gRPC → summary."""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from moatkit.data.core.errors import ConfigError, MoatError
from moatkit.models.finetune import FinetuneConfig
from moatkit.models.export import ExportConfig

DEMO_SENTENCES = ("a wonderful, moving film", "a dull, lifeless and badly acted mess",
                  "the plot is thin but the performances carry it")


@dataclasses.dataclass
class DemoConfig:
    # One epoch keeps the demo near 5 minutes on 2 cores (test accuracy ≈ 0.84; the 3-epoch task default is better).
    finetune: FinetuneConfig = dataclasses.field(default_factory=lambda: FinetuneConfig(epochs=1, learning_rate=1e-4))
    repo: str = "artifacts/models"
    model_name: str = "sentiment"
    grpc_port: int = 0  # 0 = a free port
    rest_port: int = 0
    sentences: list[str] = dataclasses.field(default_factory=lambda: list(DEMO_SENTENCES))
    latency_requests: int = 50
    min_test_accuracy: float = 0.80  # the demo fails loudly below this
    monitoring_profile: bool = True  # write the `moat monitor` reference profile into the exported version

    def validate(self):
        if not self.sentences or not all(s.strip() for s in self.sentences):
            raise ConfigError("config key 'sentences' needs at least one non-empty sentence")
        if self.latency_requests < 1:
            raise ConfigError(f"config key 'latency_requests' must be >= 1, got {self.latency_requests}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_demo(config: DemoConfig, *, log=print) -> dict:
    started = time.time()
    report, exported = _finetune_and_export(config, log=log)
    keras_probs = _keras_probabilities(report["saved_model_dir"], config.sentences)
    log("[3/4] serving it with moat-model-server on 127.0.0.1")
    served = _query_the_server(config)
    log("[4/4] summary")
    summary = _summary(config, report=report, exported=exported, served=served, keras_probs=keras_probs,
                       started=started, log=log)
    log(f"      test accuracy {summary['test_accuracy']:.4f} | model {summary['model_megabytes']} MB | REST p50 "
        f"{summary['rest_p50_ms']} ms (p99 {summary['rest_p99_ms']} ms) | REST vs gRPC max diff "
        f"{summary['max_abs_diff_rest_vs_grpc']:.1e} | REST vs in-process Keras "
        f"{summary['max_abs_diff_rest_vs_keras']:.1e}")
    log(f"      TensorBoard: {summary['tensorboard']}")
    log(f"      serve it again: {summary['serve_command']}")
    log(f"      then query: {served['rest_command'].replace(served['rest_address'], 'localhost:8501')}")
    Path(config.finetune.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(config.finetune.run_dir) / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    if summary["test_accuracy"] < config.min_test_accuracy:
        raise MoatError(f"demo test accuracy {summary['test_accuracy']:.4f} is below min_test_accuracy "
                        f"{config.min_test_accuracy}",
                        fix="train longer (--set finetune.epochs=2) or check the data report")
    return summary


def _finetune_and_export(config: DemoConfig, *, log) -> tuple[dict, dict]:
    """Steps 1 and 2: the fine-tune report and the export's result."""
    from moatkit.models.export import export_text_model
    from moatkit.models.finetune import finetune

    log(f"[1/4] fine-tuning {config.finetune.model} on {config.finetune.task} (data and weights are fetched and "
        "split on first use)")
    report = finetune(config.finetune, verbose=1 if sys.stdout.isatty() else 2)
    log(f"      test accuracy {report['test']['accuracy']:.4f} on {report['sizes']['test']} held-out sentences "
        f"(train {report['sizes']['train']}, {report['timings']['train_seconds']} s)")
    log("[2/4] exporting a SavedModel that tokenizes raw strings in the graph")
    from moatkit.app.monitor_profile import export_profile_hook

    extra = export_profile_hook(log=log) if config.monitoring_profile else None
    exported = export_text_model(ExportConfig(model_dir=report["saved_model_dir"], repo=config.repo,
                                              name=config.model_name), extra=extra)
    profiled = " + monitoring profile" if "monitoring_profile" in exported else ""
    log(f"      {exported['version_dir']} ({exported['bytes'] / 1e6:.1f} MB{profiled})")
    return report, exported


def _keras_probabilities(model_dir: str, sentences: list[str]):
    """The fine-tuned Keras model's class probabilities, in process: what the served model must reproduce."""
    import numpy as np
    from transformers import BertTokenizerFast

    from moatkit.models.export import load_text_model
    from moatkit.models.metrics import softmax

    model, _, task = load_text_model(model_dir)
    tokenizer = BertTokenizerFast.from_pretrained(model_dir)
    encoded = tokenizer(sentences, padding=True, truncation=True, max_length=task["max_length"], return_tensors="np")
    logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], training=False).logits
    return softmax(logits.numpy().astype(np.float64))


def _query_the_server(config: DemoConfig) -> dict:
    """Step 3: serves the exported model and queries it over REST and gRPC, then times single REST requests."""
    import numpy as np

    from moatkit.serving import client
    from moatkit.serving.process import ServerProcess

    base_path = Path(config.repo) / config.model_name
    with ServerProcess(model_name=config.model_name, model_base_path=base_path, port=config.grpc_port,
                       rest_api_port=config.rest_port) as server:
        client.wait_until_available(config.model_name, rest=server.rest_address, timeout=120)
        rest = client.rest_predict(server.rest_address, config.model_name, list(config.sentences))
        grpc = client.grpc_predict(server.grpc_address, config.model_name,
                                   {"text": np.array(config.sentences, dtype=object)})
        metadata = client.grpc_metadata(server.grpc_address, config.model_name)
        latencies = []
        for i in range(config.latency_requests):
            tick = time.perf_counter()
            client.rest_predict(server.rest_address, config.model_name, [config.sentences[i % len(config.sentences)]])
            latencies.append((time.perf_counter() - tick) * 1000)
    body = shlex.quote(json.dumps({"instances": [config.sentences[0]]}))
    return {"rest_address": server.rest_address, "predictions": rest["predictions"],
            "rest_probs": np.array([row["probabilities"] for row in rest["predictions"]], np.float64),
            "grpc_probs": np.asarray(grpc["probabilities"], np.float64), "signatures": sorted(metadata),
            "latencies_ms": latencies,
            "rest_command": f"curl -d {body} {server.rest_address}/v1/models/{config.model_name}:predict"}


def _summary(config: DemoConfig, *, report: dict, exported: dict, served: dict, keras_probs, started: float,
             log) -> dict:
    """Step 4: the demo's results (each prediction logged on the way)."""
    import numpy as np

    rest_probs = served["rest_probs"]
    rows = []
    for i, sentence in enumerate(config.sentences):
        label = served["predictions"][i]["label"]
        rows.append({"text": sentence, "label": label, "probabilities": rest_probs[i].tolist()})
        log(f"      {label:>9}  p={rest_probs[i].max():.3f}  {sentence!r}")
    base_path = Path(config.repo) / config.model_name
    return {
        "test_accuracy": report["test"]["accuracy"],
        "test_macro_f1": report["test"]["macro_f1"],
        "split_sizes": report["sizes"],
        "model_version_dir": exported["version_dir"],
        "model_megabytes": round(exported["bytes"] / 1e6, 1),
        "rest_p50_ms": round(percentile(served["latencies_ms"], 0.5), 2),
        "rest_p99_ms": round(percentile(served["latencies_ms"], 0.99), 2),
        "max_abs_diff_rest_vs_grpc": float(np.abs(rest_probs - served["grpc_probs"]).max()),
        "max_abs_diff_rest_vs_keras": float(np.abs(rest_probs - keras_probs).max()),
        "signatures": served["signatures"],
        "predictions": rows,
        "tensorboard": f"tensorboard --logdir {config.finetune.run_dir}",
        "serve_command": (f"moat-model-server --port=8500 --rest_api_port=8501 --model_name={config.model_name} "
                          f"--model_base_path={base_path.resolve()}"),
        "seconds": round(time.time() - started, 1),
    }
