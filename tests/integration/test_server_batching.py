"""moat-model-server --enable_batching end to end: concurrent REST and gRPC clients against a live subprocess."""

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from moatkit.serving import client
from tests import serving_helpers as models

REPO = Path(__file__).resolve().parents[2]

N_REST, N_GRPC = 8, 8
BATCHING = """
max_batch_size { value: 64 }
batch_timeout_micros { value: 400000 }
num_batch_threads { value: 1 }
max_enqueued_batches { value: 8 }
allowed_batch_sizes: 16
allowed_batch_sizes: 64
"""


@pytest.fixture(scope="module")
def batched_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    export = models.save_text_model(str(root / "export"), offset=0.5)
    base = root / "text"
    models.install_version({1: export}, str(base), 1)
    params = root / "batching.config"
    params.write_text(BATCHING)
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    # space-separated and bare-boolean flag forms, as tensorflow_model_server users write them
    proc = models.start_server(model_name="text", model_base_path=base, extra_flags=(
        "--enable_batching", "--batching_parameters_file", str(params),
        f"--monitoring_config_file={monitoring}", "--file_system_poll_wait_seconds", "0"))
    try:
        yield proc, export
    finally:
        proc.stop()


def _metric(server, name: str) -> float:
    with urllib.request.urlopen(f"http://{server.rest_address}/monitoring/prometheus/metrics",
                                    timeout=30) as response:
        text = response.read().decode()
    match = re.search(rf'^:tensorflow:serving:batching_session:{name}{{model_name="text"}} (\d+)$', text, re.M)
    return int(match.group(1)) if match else 0


def _concurrently(calls):
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i):
        barrier.wait(30)
        try:
            results[i] = calls[i]()
        except Exception as err:  # noqa: BLE001
            results[i] = err
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_concurrent_rest_and_grpc_requests_share_signature_calls(batched_server):
    server, export = batched_server
    signature = tf.saved_model.load(export).signatures["serving_default"]
    texts = [["t" * (i + 1)] * (1 + i % 3) for i in range(N_REST + N_GRPC)]
    expected = [{k: v.numpy() for k, v in signature(text=tf.constant(t)).items()} for t in texts]
    calls_before, requests_before = _metric(server, "processed_batch_size_count"), \
        _metric(server, "input_batch_size_count")

    channel = client.open_channel(server.grpc_address)
    calls = [lambda t=t: client.rest_predict(server.rest_address, "text", t) for t in texts[:N_REST]]
    calls += [lambda t=t: client.grpc_predict(server.grpc_address, "text", {"text": np.array(t, dtype=object)},
                                              channel=channel) for t in texts[N_REST:]]
    results = _concurrently(calls)
    channel.close()

    for i, (want, got) in enumerate(zip(expected, results)):
        assert not isinstance(got, Exception), got
        if i < N_REST:  # REST row format: one prediction object per input row
            assert [p["label"] for p in got["predictions"]] == [s.decode() for s in want["label"]]
            np.testing.assert_allclose([p["probabilities"] for p in got["predictions"]], want["probabilities"],
                                       atol=1e-6)
        else:
            assert got["label"].tolist() == want["label"].tolist()
            np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
    requests = _metric(server, "input_batch_size_count") - requests_before
    signature_calls = _metric(server, "processed_batch_size_count") - calls_before
    assert requests == N_REST + N_GRPC
    assert 1 <= signature_calls < requests / 2, signature_calls


def test_batching_errors_stay_with_their_request(batched_server):
    server, _ = batched_server
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_address))
    bad = predict_pb2.PredictRequest()
    bad.model_spec.name = "text"
    bad.inputs["text"].CopyFrom(tf.make_tensor_proto([1.0]))
    calls = [lambda: client.rest_predict(server.rest_address, "text", ["ok"]),
             lambda: stub.Predict(bad, timeout=30),
             lambda: client.rest_predict(server.rest_address, "text", ["x"] * 65),
             lambda: client.rest_predict(server.rest_address, "text", ["fine", "too"])]
    ok, wrong_type, too_big, ok2 = _concurrently(calls)
    assert [p["label"] for p in ok["predictions"]] == ["short"]
    assert [p["label"] for p in ok2["predictions"]] == ["long", "short"]  # offset 0.5: 4/7 - 0.5 > 0
    assert isinstance(wrong_type, grpc.RpcError) and wrong_type.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expects arg[0] to be string but float is provided" in wrong_type.details()
    assert isinstance(too_big, client.RestError)
    assert (too_big.status, too_big.message) == (400, "Task size 65 is larger than maximum input batch size 64")

    request = urllib.request.Request(f"http://{server.rest_address}/v1/models/text:predict",
                                     data=json.dumps({"instances": ["x"] * 65}).encode())
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 400
    assert json.loads(err.value.read()) == {"error": "Task size 65 is larger than maximum input batch size 64"}


def test_bad_batching_parameters_file_exits_2(tmp_path):
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    model = tmp_path / "m" / "1"
    model.mkdir(parents=True)
    result = subprocess.run([sys.executable, "-m", "moatkit.serving.server", f"--model_base_path={model.parent}",
                             "--port=0", "--enable_batching", f"--batching_parameters_file={params}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("moat-model-server")]
    assert len(lines) == 1
    assert "final entry in allowed_batch_sizes must equal max_batch_size" in lines[0]
    assert "Traceback" not in result.stderr


def test_full_batch_queue_answers_unavailable(tmp_path):
    models.save_slow_model(str(tmp_path / "slow" / "1"))
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 4 } batch_timeout_micros { value: 0 } "
                      "num_batch_threads { value: 1 } max_enqueued_batches { value: 1 }")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true }\n')
    server = models.start_server(model_name="slow", model_base_path=tmp_path / "slow", extra_flags=(
        "--enable_batching=true", f"--batching_parameters_file={params}", f"--monitoring_config_file={monitoring}",
        "--file_system_poll_wait_seconds=0"))

    def metric(name: str) -> int:
        with urllib.request.urlopen(f"http://{server.rest_address}/monitoring/prometheus/metrics",
                                    timeout=30) as response:
            text = response.read().decode()
        match = re.search(rf'^{name}{{model_name="slow"}} (\d+)$', text, re.M)
        return int(match.group(1)) if match else 0

    def wait_for(requests: int, queued: int) -> None:
        """Until `requests` requests reached the scheduler and `queued` batches wait for a batch thread."""
        deadline = time.monotonic() + 30
        while (metric(":tensorflow:serving:batching_session:input_batch_size_count") < requests
               or metric(":moat:serving:batching:queued_batches") != queued):
            assert time.monotonic() < deadline
            time.sleep(0.02)

    results = {}
    try:
        running = threading.Thread(target=lambda: results.setdefault(
            "running", client.rest_predict(server.rest_address, "slow", [2_000_000])))
        running.start()  # the only batch thread is busy for seconds
        wait_for(1, queued=0)
        queued = threading.Thread(target=lambda: results.setdefault(
            "queued", client.rest_predict(server.rest_address, "slow", [1, 2, 3, 4])))
        queued.start()  # a full batch: the one batch the queue may hold
        wait_for(2, queued=1)

        request = urllib.request.Request(f"http://{server.rest_address}/v1/models/slow:predict",
                                         data=json.dumps({"instances": [5]}).encode())
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        assert err.value.code == 503
        assert json.loads(err.value.read()) == {
            "error": "The batch scheduling queue to which this task was submitted is full"}
        with pytest.raises(grpc.RpcError) as rpc_err:
            client.grpc_predict(server.grpc_address, "slow", {"n": np.array([6], dtype=np.int64)})
        assert rpc_err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rpc_err.value.details() == "The batch scheduling queue to which this task was submitted is full"
        assert "running" not in results  # the rejections did not wait for the running batch

        running.join(120)
        queued.join(120)
        assert results == {"running": {"predictions": [2_000_000]}, "queued": {"predictions": [4, 4, 4, 4]}}
        assert client.rest_predict(server.rest_address, "slow", [7]) == {"predictions": [7]}  # serving again
    finally:
        server.stop()
