"""`moat compress` end to end on the tiny baseline: the report (JSON, markdown, PNG, TensorBoard), the exported
variants, and a PTQ variant served by moat-model-server (--prefer_tflite_model) over REST and gRPC."""

import json

import numpy as np
import pytest
import tensorflow as tf


@pytest.fixture(scope="module")
def ptq_report(tiny_run, tmp_path_factory):
    from moatkit.app.cli import main

    out = tmp_path_factory.mktemp("compress_report")
    overrides = {"model_dir": tiny_run / "model", "max_train_examples": 1600, "max_eval_examples": 200,
                 "out_dir": out / "out", "repo": out / "repo", "name": "tiny", "latency_repeats": 30,
                 "throughput_batches": 3, "warmup_calls": 3, "ptq.modes": "[dynamic]"}
    argv = ["compress", "--methods", "ptq"] + [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    assert main(argv) == 0
    report = json.loads((out / "out" / "report.json").read_text())
    assert report["config"]["methods"] == ["ptq"] and report["config"]["ptq"]["modes"] == ["dynamic"]
    return out, report


def test_report_rows_sizes_and_latency(ptq_report, tiny_run):
    out, report = ptq_report
    rows = {r["name"]: r for r in report["variants"]}
    assert list(rows) == ["float32", "ptq-dynamic"]
    base, dynamic = rows["float32"], rows["ptq-dynamic"]
    finetune_report = json.loads((tiny_run / "report.json").read_text())
    assert report["split_dir"] == finetune_report["split_dir"] and report["sizes"]["test"] == 200
    assert base["accuracy"] == pytest.approx(finetune_report["test"]["accuracy"], abs=0.006)  # same split
    assert base["accuracy_delta_points"] == 0 and base["smaller_x"] == 1 and base["speedup_p50_x"] == 1
    assert dynamic["accuracy_delta_points"] == pytest.approx(100 * (dynamic["accuracy"] - base["accuracy"]), abs=0.01)
    assert dynamic["accuracy_delta_points"] >= -3
    # float32 token-id SavedModel vs. int8 weights: the 30,522 × 32 embedding table dominates both
    assert base["bytes"] > 3.5 * dynamic["bytes"] and dynamic["smaller_x"] > 3.5
    assert base["params"] == dynamic["params"] == 997_090
    assert base["sparsity"] < 0.01 and dynamic["sparsity"] is None
    for row in rows.values():
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["examples_per_s"] > 0 and row["batch_size"] == 32
        assert row["gzip_bytes"] < row["bytes"]
    assert [c["variant"] for c in report["acceptance"]] == ["ptq-dynamic"]
    assert set(report["acceptance"][0]["conditions"]) == {"smaller >= 3.5x", "p50 speedup >= 3x", "drop <= 0.5"}

    markdown = (out / "out" / "report.md").read_text()
    assert markdown.startswith("| variant | accuracy | Δ acc (pts) |") and "| ptq-dynamic |" in markdown
    png = (out / "out" / "report.png").read_bytes()
    assert tf.image.decode_png(png).shape == (500, 800, 4)
    tags = set()
    for event_file in (out / "out" / "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(value.tag for value in event.summary.value)
    assert {"compression_report", "accuracy_vs_latency"} <= tags


def test_ptq_variant_is_served_over_rest_and_grpc(ptq_report, tiny_context):
    from moatkit.serving import client
    from moatkit.serving.process import free_port
    from moatkit.serving.server import ModelServer, parse_flags, validate

    out, report = ptq_report
    exports = {r["name"]: r["export"] for r in report["variants"]}
    assert exports["float32"]["format"] == "saved_model" and exports["ptq-dynamic"]["format"] == "tflite"
    assert (out / "repo" / "tiny-float32" / "1" / "saved_model.pb").is_file()
    assert (out / "repo" / "tiny-ptq-dynamic" / "1" / "model.tflite").is_file()
    # run_compress served every exported variant from one server (TFLite ones on the interpreter) and asked it
    for name, served in report["served"].items():
        assert served["rest_equals_grpc"] and served["texts"] == 8, name
        assert served["labels_match_token_id_model"] >= 7, name  # in-graph vs. HF tokenizer, batch padding
    assert report["served"]["ptq-dynamic"]["engine"] == "tflite"

    texts = tiny_context.texts["test"][:4]
    options = parse_flags([f"--port={free_port()}", f"--rest_api_port={free_port()}", "--model_name=tiny-ptq-dynamic",
                           f"--model_base_path={out / 'repo' / 'tiny-ptq-dynamic'}", "--prefer_tflite_model"])
    validate(options)
    server = ModelServer(options)
    server.start()
    try:
        rest, grpc_target = f"127.0.0.1:{server.rest_port}", f"127.0.0.1:{server.grpc_port}"
        client.wait_until_available("tiny-ptq-dynamic", rest=rest, timeout=60)
        by_rest = client.rest_predict(rest, "tiny-ptq-dynamic", texts)["predictions"]
        by_grpc = client.grpc_predict(grpc_target, "tiny-ptq-dynamic", {"text": np.array(texts, dtype=object)})
    finally:
        server.stop()
    rest_probs = np.array([p["probabilities"] for p in by_rest])
    np.testing.assert_allclose(by_grpc["probabilities"], rest_probs, atol=1e-6)
    assert [p["label"] for p in by_rest] == by_grpc["label"].astype(str).tolist()
    # The served flatbuffer (raw strings, in-graph tokenizer) matches the measured token-id flatbuffer.
    from moatkit.models.compress.ptq import tflite_predict
    from moatkit.models.compress.base import encode
    from moatkit.models.metrics import softmax

    logits = tflite_predict(out / "out" / "ptq" / "dynamic.tflite")(
        encode(tiny_context.tokenizer, texts, tiny_context.max_length))
    np.testing.assert_allclose(rest_probs, softmax(logits), atol=0.05)
    assert [p["label"] for p in by_rest] == [tiny_context.labels[i] for i in logits.argmax(-1)]


def test_the_bench_recipes_are_valid_settings():
    from moatkit.models.compress.base import CompressConfig
    from moatkit.models.compress.report import mr_recipes

    config = CompressConfig(**mr_recipes())
    config.validate()
    assert config.prune.embedding_sparsity == 0.9 and config.prune.drop_unseen_tokens
    assert config.distill.student_layers == 2 and config.distill.unlabeled == "amazon"
