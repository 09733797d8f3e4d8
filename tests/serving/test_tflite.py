"""--prefer_tflite_model: a version's model.tflite is served by the TFLite interpreter over REST and gRPC."""

import json
import threading
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf

from moatkit.serving import client
from moatkit.serving.process import free_port

X = [1.0, 2.0, 5.0]


class HalfPlus(tf.Module):
    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": 0.5 * x + self.offset}


@pytest.fixture(scope="module")
def half_plus_repo(tmp_path_factory):
    """Version 1 holds a SavedModel computing x/2 + 2 and a model.tflite computing x/2 + 3, so each answer shows
    which engine served it (TF Serving's half_plus_two test model, with a TFLite twin that differs on purpose)."""
    version = tmp_path_factory.mktemp("half_plus") / "half_plus" / "1"
    saved = HalfPlus(2.0)
    tf.saved_model.save(saved, str(version), signatures={"serving_default": saved.serve})
    lite = HalfPlus(3.0)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([lite.serve.get_concrete_function()], lite)
    (version / "model.tflite").write_bytes(converter.convert())
    return version.parent


def _server(base, *flags):
    from moatkit.serving.server import ModelServer, parse_flags, validate

    options = parse_flags([f"--port={free_port()}", f"--rest_api_port={free_port()}", "--model_name=half_plus",
                           f"--model_base_path={base}", "--file_system_poll_wait_seconds=0", *flags])
    validate(options)
    server = ModelServer(options)
    server.start()
    return server


@pytest.mark.parametrize("flags, offset", [(("--prefer_tflite_model",), 3.0), ((), 2.0)],
                         ids=["tflite", "saved_model"])
def test_rest_and_grpc_answer_from_the_preferred_engine(half_plus_repo, flags, offset):
    server = _server(half_plus_repo, *flags)
    try:
        rest, grpc_target = f"127.0.0.1:{server.rest_port}", f"127.0.0.1:{server.grpc_port}"
        expected = [0.5 * x + offset for x in X]
        assert client.rest_predict(rest, "half_plus", X) == {"predictions": expected}
        columnar = client.rest_request(rest, "/v1/models/half_plus:predict", {"inputs": {"x": X}})
        assert columnar == {"outputs": expected}
        out = client.grpc_predict(grpc_target, "half_plus", {"x": np.array(X, np.float32)})
        np.testing.assert_array_equal(out["y"], np.array(expected, np.float32))
        assert client.rest_status(rest, "half_plus")["model_version_status"][0]["state"] == "AVAILABLE"
        signature = client.grpc_metadata(grpc_target, "half_plus")["serving_default"]
        assert signature.method_name == "tensorflow/serving/predict"
        assert tf.as_dtype(signature.inputs["x"].dtype) == tf.float32
        assert [d.size for d in signature.inputs["x"].tensor_shape.dim] == [-1]
        assert [d.size for d in signature.outputs["y"].tensor_shape.dim] == [-1]
        with urllib.request.urlopen(f"http://{rest}/v1/models/half_plus/metadata") as response:
            metadata = json.loads(response.read())
        inputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
        assert inputs["x"]["dtype"] == "DT_FLOAT" and inputs["x"]["tensor_shape"]["dim"] == [{"size": "-1",
                                                                                                "name": ""}]
        with pytest.raises(grpc.RpcError) as err:
            client.grpc_predict(grpc_target, "half_plus", {"z": np.array(X, np.float32)})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Missing but required: {x}" in err.value.details()
    finally:
        server.stop()


def test_tflite_interpreter_pool_follows_the_tf_serving_flags(half_plus_repo):
    server = _server(half_plus_repo, "--prefer_tflite_model", "--num_tflite_pools=1",
                     "--num_tflite_interpreters_per_pool=2")
    try:
        servable = server.manager.get_servable("half_plus")
        assert servable._pool.qsize() == 2  # two interpreters: two requests run side by side
        assert client.rest_predict(f"127.0.0.1:{server.rest_port}", "half_plus", X) == {
            "predictions": [0.5 * x + 3.0 for x in X]}
    finally:
        server.stop()


def test_tflite_servable_runs_batched_concurrent_requests(half_plus_repo):
    from moatkit.serving.batching import BatchingParameters, BatchScheduler
    from moatkit.serving.tflite_servable import TFLiteServable

    batcher = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=20_000))
    servable = TFLiteServable(name="half_plus", version=1, path=str(half_plus_repo / "1"), batcher=batcher)
    results = {}

    def call(i):
        results[i] = servable.predict({"x": np.array([float(i)], np.float32)})["y"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        batcher.stop()
    assert {i: float(v[0]) for i, v in results.items()} == {i: 0.5 * i + 3.0 for i in range(8)}
    assert servable.signature_calls["serving_default"] < 8  # requests were merged into batches


@pytest.mark.slow  # export + TFLite conversion of MiniLM: ≈2 min on 2 loaded cores
def test_mr_model_tflite_variant_matches_saved_model(small_run, mr_dir, tmp_path):
    """The fine-tuned MiniLM exported with tflite=true: raw strings in, probabilities within 1e-3 of the
    SavedModel's on real MR sentences (tokenized in the TFLite graph by tensorflow_text kernels)."""
    from moatkit.data.dataset import read_records
    from moatkit.models.export import ExportConfig, export_text_model
    from moatkit.serving.tflite_servable import TFLiteServable

    result = export_text_model(ExportConfig(model_dir=small_run["saved_model_dir"], repo=str(tmp_path),
                                            name="sentiment", tflite=True))
    assert result["tflite_bytes"] > 80_000_000  # float32 MiniLM: 22M parameters
    texts = [r["text"] for r in read_records(mr_dir)[:64]] + ["", "a wonderful, moving film"]
    lite = TFLiteServable(name="sentiment", version=1, path=result["version_dir"])
    assert sorted(lite.signature_defs) == ["serving_default"]
    saved = tf.saved_model.load(result["version_dir"]).signatures["serving_default"]
    expected = saved(text=tf.constant(texts))
    got = lite.predict({"text": np.array(texts, dtype=object)})
    assert np.abs(got["probabilities"] - expected["probabilities"].numpy()).max() < 1e-3
    assert got["label"].tolist() == expected["label"].numpy().tolist()
    one = lite.predict({"text": np.array(texts[:1], dtype=object)})  # dynamic batch size
    np.testing.assert_allclose(one["probabilities"], got["probabilities"][:1], atol=1e-5)


def test_tflite_tokenizer_matches_saved_model_tokenizer(minilm_dir):
    from moatkit.models.export import TFLiteBertTokenizer
    from moatkit.data.text_tokenizer import InGraphBertTokenizer

    vocab = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    base = InGraphBertTokenizer(vocab=vocab, max_length=12)
    texts = tf.constant(["Hello, World!", "a much longer sentence that will be truncated here", "",
                         "tab\tand\nnewline", "naïve café"])
    for got, want in zip(TFLiteBertTokenizer(base)(texts), base(texts)):
        assert got.numpy().tolist() == want.numpy().tolist()
