"""moat-model-server end to end: a real subprocess, standard TF Serving clients (urllib, gRPC stubs)."""

import base64
import gzip
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from moatkit.serving import client
from tests import serving_helpers as models

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["hi", "a somewhat longer sentence", "héllo wörld"]
START_TIMEOUT = 60


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("server_models")
    return {1: models.save_text_model(str(root / "v1"), offset=0.0),
            2: models.save_text_model(str(root / "v2"), offset=1.0)}


@pytest.fixture(scope="module")
def server(saved_models, tmp_path_factory):
    base = tmp_path_factory.mktemp("repo") / "text"
    for version, source in saved_models.items():
        models.install_version(saved_models, str(base), version, source=source and version)
    models.write_warmup(str(base / "2"), [["warm"], ["up", "twice"]])
    config = tmp_path_factory.mktemp("config") / "models.config"
    config.write_text(f"""
model_config_list {{
  config {{
    name: "text"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
""")
    monitoring = config.parent / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    proc = models.start_server(model_config_file=config, extra_flags=(
        f"--monitoring_config_file={monitoring}", "--file_system_poll_wait_seconds=0"))
    try:
        yield proc
    finally:
        proc.stop()


def _http(server, method: str, path: str, body=None, *, headers=None):
    return models.http(server.rest_address, method, path, body, headers=headers)


def _expected(export_dir: str, texts: list[str]) -> dict:
    out = tf.saved_model.load(export_dir).signatures["serving_default"](text=tf.constant(texts))
    return {k: v.numpy() for k, v in out.items()}


def _as_json_floats(array) -> list:
    """What a float32 tensor looks like after TF Serving's shortest-repr JSON writer."""
    return json.loads(json.dumps(np.vectorize(lambda v: float(str(np.float32(v))))(array).tolist()))


# === REST ===

def test_rest_status_json_is_tf_serving_shaped(server):
    ok = {"error_code": "OK", "error_message": ""}
    assert _http(server, "GET", "/v1/models/text") == (200, {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": ok},
        {"version": "1", "state": "AVAILABLE", "status": ok}]})
    assert _http(server, "GET", "/v1/models/text/versions/1") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": ok}]})
    assert _http(server, "GET", "/v1/models/text/labels/canary")[1]["model_version_status"][0]["version"] == "2"
    assert _http(server, "GET", "/v1/models/nope") == (404, {"error": "Could not find any versions of model nope"})


def test_rest_metadata(server):
    status, body = _http(server, "GET", "/v1/models/text/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "text", "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["text"]["dtype"] == "DT_STRING"
    assert default["inputs"]["text"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert set(default["outputs"]) == {"probabilities", "label"}
    assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"


def test_rest_row_and_columnar_predict(server, saved_models):
    expected = _expected(saved_models[2], TEXTS)
    status, body = _http(server, "POST", "/v1/models/text:predict", {"instances": TEXTS})
    assert status == 200
    probs = _as_json_floats(expected["probabilities"])
    labels = [s.decode() for s in expected["label"]]
    assert body == {"predictions": [{"label": labels[i], "probabilities": probs[i]} for i in range(len(TEXTS))]}
    status, body = _http(server, "POST", "/v1/models/text/versions/2:predict", {"inputs": {"text": TEXTS}})
    assert (status, body) == (200, {"outputs": {"label": labels, "probabilities": probs}})


def test_rest_float_text_is_shortest_float32_repr(server):
    request = urllib.request.Request(f"http://{server.rest_address}/v1/models/text:predict",
                                     data=json.dumps({"instances": ["hi"]}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    numbers = [t.strip("[]{}, ") for t in text.split("[")[-1].split(",")]
    assert all(len(n.split(".")[-1]) <= 9 for n in numbers), text


def test_rest_b64_gzip_labels_versions_and_numeric(server, saved_models):
    encoded = {"b64": base64.b64encode("héllo wörld".encode()).decode()}
    _, plain = _http(server, "POST", "/v1/models/text:predict", {"instances": ["héllo wörld"]})
    assert _http(server, "POST", "/v1/models/text:predict", {"instances": [encoded]}) == (200, plain)
    zipped = gzip.compress(json.dumps({"instances": ["héllo wörld"]}).encode())
    assert _http(server, "POST", "/v1/models/text:predict", zipped,
                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}) == (200, plain)
    v1 = _expected(saved_models[1], ["hi"])
    assert client.rest_predict(server.rest_address, "text", ["hi"], label="stable")["predictions"][0]["probabilities"] \
        == _as_json_floats(v1["probabilities"])[0]
    assert client.rest_predict(server.rest_address, "text", ["hi"], version=1) == \
        client.rest_predict(server.rest_address, "text", ["hi"], label="stable")
    body = client.rest_predict(server.rest_address, "text",
                               [{"x": [1, 2, 3], "scale": 2.0}, {"x": [0, 0, 3], "scale": 1}],
                               signature_name="numeric", version=1)
    assert body == {"predictions": [4.0, 1.0]}


@pytest.mark.parametrize("method, path, body, code, error", [
    ("POST", "/v1/models/text:predict", {"instances": 3}, 400,
     "JSON Value: {\"instances\":3} Excepting 'instances' to be an list/array"),
    ("POST", "/v1/models/nope:predict", {"instances": ["a"]}, 404, "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/text/versions/7:predict", {"instances": ["a"]}, 404,
     "Servable not found for request: Specific(text, 7)"),
    ("POST", "/v1/models/text/labels/beta:predict", {"instances": ["a"]}, 400,
     "Unrecognized servable version label: beta"),
    ("POST", "/v1/models/text:predict", {"instances": ["a"], "signature_name": "nope"}, 400,
     "Serving signature name: \"nope\" not found in signature def"),
    ("POST", "/v1/models/text:predict", {"instances": [1.5]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 1.5 Type: Number "
     "is not of expected type: string"),
    ("POST", "/v1/models/text:predict", b"{not json", 400, None),
    ("GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
])
def test_rest_errors(server, method, path, body, code, error):
    status, payload = _http(server, method, path, body)
    assert status == code
    assert set(payload) == {"error"}
    if error is not None:
        assert payload["error"] == error


def test_rest_classify_and_regress(server):
    status, body = _http(server, "POST", "/v1/models/text/versions/1:classify",
                         {"signature_name": "classify", "examples": [{"text": "abcdefg"}]})
    assert (status, body) == (200, {"results": [[["short", 0.5], ["long", 0.5]]]})
    status, body = _http(server, "POST", "/v1/models/text/versions/1:regress",
                         {"signature_name": "regress", "context": {"text": "abc"}, "examples": [{}, {"text": "ab"}]})
    assert (status, body) == (200, {"results": [3.0, 2.0]})


def test_prometheus_metrics_and_warmup_log(server):
    _http(server, "POST", "/v1/models/text:predict", {"instances": ["a"]})
    with urllib.request.urlopen(f"http://{server.rest_address}/monitoring/prometheus/metrics", timeout=30) as response:
        text = response.read().decode()
    assert ':tensorflow:serving:request_count{model_name="text",status="OK",api="predict"}' in text
    assert "Number of warmup records read: 2." in server.output()


# === gRPC ===

def test_grpc_predict_matches_rest_and_in_process(server, saved_models):
    out = client.grpc_predict(server.grpc_address, "text", {"text": np.array(TEXTS, dtype=object)})
    expected = _expected(saved_models[2], TEXTS)
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], atol=1e-6)
    assert out["label"].tolist() == expected["label"].tolist()
    rest = client.rest_predict(server.rest_address, "text", TEXTS)["predictions"]
    np.testing.assert_allclose(out["probabilities"], [r["probabilities"] for r in rest], atol=1e-6)
    v1 = client.grpc_predict(server.grpc_address, "text", {"text": np.array(TEXTS, dtype=object)}, version=1,
                             output_filter=("probabilities",))
    assert set(v1) == {"probabilities"}
    np.testing.assert_allclose(v1["probabilities"], _expected(saved_models[1], TEXTS)["probabilities"], atol=1e-6)


def test_grpc_raw_stub_errors_and_labels(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_address))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "text"
    request.model_spec.version_label = "stable"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(["abc"]))
    response = stub.Predict(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("text", 1)
    assert response.model_spec.signature_name == "serving_default"

    request.model_spec.name = "nope"
    request.model_spec.ClearField("version_label")
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "Servable not found for request: Latest(nope)"
    request.model_spec.name = "text"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([1.0]))
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expects arg[0] to be string but float is provided" in err.value.details()


def test_grpc_metadata_status_health_and_classify(server):
    signatures = client.grpc_metadata(server.grpc_address, "text", version=2)
    assert signatures["serving_default"].inputs["text"].dtype == tf.string.as_datatype_enum
    assert client.grpc_model_status(server.grpc_address, "text") == [
        {"version": 2, "state": "AVAILABLE", "error_code": "OK", "error_message": ""},
        {"version": 1, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]
    channel = grpc.insecure_channel(server.grpc_address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "text"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "text"
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelMetadata(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "text"
    classify.model_spec.version.value = 1
    classify.model_spec.signature_name = "classify"
    example = classify.input.example_list.examples.add()
    example.features.feature["text"].bytes_list.value.append(b"abcdefg")
    result = stub.Classify(classify, timeout=30).result.classifications[0].classes
    assert [c.label for c in result] == ["short", "long"]
    assert result[1].score == pytest.approx(0.5, abs=1e-6)


# === CLI and lifecycle ===

@pytest.mark.parametrize("args, fragment", [
    (["--bogus=1"], "unknown command line flag 'bogus'"),
    (["--port=abc", "--model_base_path=/tmp"], "--port=abc: expected int"),
    (["--model_base_path=/definitely/missing"], "--model_base_path=/definitely/missing: no such directory"),
    ([], "--model_base_path is required"),
])
def test_bad_flags_exit_2_with_one_line(args, fragment):
    result = subprocess.run([sys.executable, "-m", "moatkit.serving.server", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("moat-model-server")]
    assert len(lines) == 1 and fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_single_model_polls_new_versions_and_stops_on_sigterm(saved_models, tmp_path):
    base = tmp_path / "model"
    models.install_version(saved_models, str(base), 1)
    proc = models.start_server(model_name="text", model_base_path=base,
                               extra_flags=("--file_system_poll_wait_seconds=1",))
    try:
        assert client.grpc_model_status(proc.grpc_address, "text")[0]["version"] == 1
        models.install_version(saved_models, str(base), 2)
        client.wait_until_available("text", grpc_target=proc.grpc_address, version=2, timeout=START_TIMEOUT)
        out = client.grpc_predict(proc.grpc_address, "text", {"text": np.array(["hi"], dtype=object)})
        np.testing.assert_allclose(out["probabilities"], models.expected_probs(["hi"], 1.0), atol=1e-6)
        deadline = time.monotonic() + START_TIMEOUT
        while client.grpc_model_status(proc.grpc_address, "text")[-1]["state"] != "END" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [s["state"] for s in client.grpc_model_status(proc.grpc_address, "text")] == ["AVAILABLE", "END"]

        from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
        reload = model_management_pb2.ReloadConfigRequest()
        for name in ("text", "alias"):
            reload.config.model_config_list.config.add(name=name, base_path=str(base), model_platform="tensorflow")
        stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(proc.grpc_address))
        assert stub.HandleReloadConfigRequest(reload, timeout=60).status.error_code == 0
        assert client.grpc_model_status(proc.grpc_address, "alias")[0]["state"] == "AVAILABLE"

        assert proc.terminate(timeout=30) == 0
        proc.stop()  # joins the output reader
        assert "Server stopped" in proc.output()
    finally:
        proc.stop()


def test_unusable_grpc_socket_path_is_one_line_and_exit_2(tmp_path):
    model = (Path(__file__).resolve().parents[1] / "third_party" / "tensorflow_serving" / "tensorflow_serving" /
             "servables" / "tensorflow" / "testdata" / "saved_model_half_plus_two_cpu")
    result = subprocess.run([sys.executable, "-m", "moatkit.serving.server", "--port=0", "--model_name=m",
                             f"--model_base_path={model}",
                             f"--grpc_socket_path={tmp_path / 'missing' / 'dir' / 'sock'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "could not listen on the Unix socket" in result.stderr.splitlines()[-1]
