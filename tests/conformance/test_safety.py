"""Safety of moat-model-server: request size limits (REST 413, gRPC RESOURCE_EXHAUSTED, also for tiny protos
that declare huge tensors and for gzip bombs), model names that cannot reach outside the configured base paths,
and graceful shutdown on SIGTERM (in-flight requests finish, new connections are refused)."""

import gzip
import http.client as http_client
import json
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from moatkit.serving.errors import ServingConfigError
from moatkit.serving import client
from moatkit.serving.model_manager import configs_from_text
from moatkit.serving.server import FlagError, parse_flags, validate
from tests.serving_helpers import copy_version, http, model_config, save_slow_model, start_server, wait_for

LIMIT = 1 << 20  # 1 MiB for both APIs on this server
SLOW_SECONDS = 3.0  # how long the in-flight requests of the SIGTERM test run (calibrated to the machine's speed)


@pytest.fixture(scope="module")
def guarded(half_plus, tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    copy_version(half_plus["two"], root / "default", 1)
    save_slow_model(str(root / "slow" / "1"))
    config = root / "models.config"
    config.write_text(model_config([("default", root / "default", ""), ("slow", root / "slow", "")]))
    server = start_server(model_config_file=config, extra_flags=(
        f"--rest_api_max_request_bytes={LIMIT}", f"--grpc_channel_arguments=grpc.max_receive_message_length={LIMIT}",
        "--rest_api_timeout_in_ms=60000"))
    try:
        yield server
    finally:
        server.stop()


def _raw(address: str, method: str, path: str, chunks, headers: dict) -> tuple[int, dict]:
    """Sends a body as given chunks (chunked transfer encoding when headers ask for it)."""
    host, port = address.rsplit(":", 1)
    connection = http_client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=chunks, headers=headers,
                           encode_chunked="Transfer-Encoding" in headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _predict_request(model: str, name: str, array: np.ndarray):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return request


# === size limits ===

def test_rest_body_limit(guarded):
    rows = [2.0] * 60_000  # ~300 KB of JSON: under the limit
    status, body = http(guarded.rest_address, "POST", "/v1/models/default:predict", {"instances": rows})
    assert status == 200 and len(body["predictions"]) == 60_000 and body["predictions"][0] == 3.0
    big = {"instances": [2.0] * 300_000}  # ~1.5 MB
    status, body = http(guarded.rest_address, "POST", "/v1/models/default:predict", big)
    assert status == 413
    assert body == {"error": f"Request body of {len(json.dumps(big))} bytes exceeds the limit of {LIMIT} bytes "
                             "(--rest_api_max_request_bytes)"}
    # a gzip bomb: 2 KB on the wire, over the limit once inflated
    bomb = gzip.compress(b'{"instances": [' + b"0.0, " * 400_000 + b"0.0]}")
    assert len(bomb) < 20_000
    status, body = http(guarded.rest_address, "POST", "/v1/models/default:predict", bomb,
                        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 413 and "exceeds the limit" in body["error"]


def test_rest_chunked_bodies(guarded):
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    parts = [b'{"instances": [', b"2.0, 4.0", b"]}"]
    assert _raw(guarded.rest_address, "POST", "/v1/models/default:predict", iter(parts), headers) == \
        (200, {"predictions": [3.0, 4.0]})
    huge = (b"[" + b"0.0," * 100_000 + b"0.0]" for _ in range(5))  # 5 chunks of 400 KB
    status, body = _raw(guarded.rest_address, "POST", "/v1/models/default:predict", huge, headers)
    assert status == 413 and "exceeds the limit" in body["error"]


def test_grpc_receive_limit(guarded):
    channel = client.open_channel(guarded.grpc_address)
    try:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        ok = predict(_predict_request("default", "x", np.full(100_000, 2.0, np.float32)), timeout=60)
        assert tf.make_ndarray(ok.outputs["y"])[:2].tolist() == [3.0, 3.0]
        with pytest.raises(grpc.RpcError) as err:
            predict(_predict_request("default", "x", np.full(300_000, 2.0, np.float32)), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in err.value.details()
        # 20 bytes on the wire that would expand to 4 GiB: refused before anything is allocated
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.inputs["x"].dtype = types_pb2.DT_FLOAT
        request.inputs["x"].tensor_shape.dim.add().size = 1 << 30
        request.inputs["x"].float_val.append(1.0)
        with pytest.raises(grpc.RpcError) as err:
            predict(request, timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.details() == (f"Input tensor x of shape [{1 << 30}] and type float needs {4 << 30} bytes, "
                                       f"more than the {LIMIT}-byte request limit")
        request.inputs["x"].tensor_shape.dim[0].size = -5
        with pytest.raises(grpc.RpcError) as err:
            predict(request, timeout=60)
        assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: x")
    finally:
        channel.close()


def test_limit_flags_are_validated():
    with pytest.raises(FlagError, match="rest_api_max_request_bytes=0: must be positive"):
        validate(parse_flags(["--model_base_path=/tmp", "--rest_api_max_request_bytes=0"]))
    with pytest.raises(FlagError, match="'grpc.max_receive_message_length' is not key=value"):
        validate(parse_flags(["--model_base_path=/tmp", "--grpc_channel_arguments=grpc.max_receive_message_length"]))


# === names stay names ===

def test_model_names_cannot_escape_base_paths(guarded, tmp_path):
    for name in ("../default", "..", "default/../slow", "/etc/passwd"):
        with pytest.raises(ServingConfigError, match="may not contain"):
            configs_from_text(model_config([(name, tmp_path, "")]))
    with pytest.raises(FlagError, match="not a usable model name"):
        validate(parse_flags([f"--model_base_path={tmp_path}", "--model_name=../x"]))
    # requests: a name is only ever looked up among the configured models
    assert http(guarded.rest_address, "POST", "/v1/models/..%2Fdefault:predict", {"instances": [1.0]}) == \
        (404, {"error": "Servable not found for request: Latest(../default)"})
    assert http(guarded.rest_address, "GET", "/v1/models/..%2F..%2Fetc") == \
        (404, {"error": "Could not find any versions of model ../../etc"})
    with pytest.raises(grpc.RpcError) as err:
        client.grpc_predict(guarded.grpc_address, "../default", {"x": np.array([1.0], np.float32)})
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # and ReloadConfig refuses such a name, leaving the served models as they were
    reload = model_management_pb2.ReloadConfigRequest()
    reload.config.model_config_list.config.add(name="../x", base_path=str(tmp_path), model_platform="tensorflow")
    with grpc.insecure_channel(guarded.grpc_address) as channel:
        reply = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(reload, timeout=60)
    assert reply.status.error_code == 3 and "may not contain" in reply.status.error_message
    assert http(guarded.rest_address, "POST", "/v1/models/default:predict", {"instances": [2.0]}) == \
        (200, {"predictions": [3.0]})


# === graceful shutdown (runs last: it stops the module's server) ===

def _slow_steps(server) -> int:
    """Loop steps for a SLOW_SECONDS call, measured on this (possibly busy) machine."""
    probe = 200_000
    started = time.monotonic()
    assert http(server.rest_address, "POST", "/v1/models/slow:predict", {"instances": [probe]}) == \
        (200, {"predictions": [probe]})
    return max(probe, int(probe * SLOW_SECONDS / (time.monotonic() - started)))


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(guarded):
    results, finished = {}, {}
    steps = _slow_steps(guarded)

    def slow_rest():
        results["rest"] = http(guarded.rest_address, "POST", "/v1/models/slow:predict", {"instances": [steps]})
        finished["rest"] = time.monotonic()

    def slow_grpc():
        out = client.grpc_predict(guarded.grpc_address, "slow", {"n": np.array([steps], np.int64)}, timeout=120)
        results["grpc"] = out["y"].tolist()
        finished["grpc"] = time.monotonic()

    threads = [threading.Thread(target=slow_rest), threading.Thread(target=slow_grpc)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both are running inside the model now
    sigterm_at = time.monotonic()
    guarded.process.terminate()

    def refused():
        host, port = guarded.rest_address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused, timeout=10, interval=0.05, what="the REST port to refuse connections")
    refused_at = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        client.grpc_predict(guarded.grpc_address, "default", {"x": np.array([2.0], np.float32)}, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    for thread in threads:
        thread.join(120)
    assert results == {"rest": (200, {"predictions": [steps]}), "grpc": [steps]}
    assert min(finished.values()) > refused_at > sigterm_at  # refused new work while the old was still running
    assert guarded.process.wait(timeout=60) == 0
    guarded.stop()
    assert "Waiting for 1 in-flight REST request(s)" in guarded.output()
    assert "Server stopped" in guarded.output()
