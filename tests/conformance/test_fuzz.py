"""Fuzzing the live server with hypothesis: random and malformed REST requests (JSON of every shape and type,
wrong types, huge and negative shapes, bad b64, bad paths and methods, truncated and garbage bytes, broken gzip)
and gRPC requests (random TensorProtos, dtypes, shapes, specs, examples, undecodable bytes).

Every answer must be a well-formed client error or success: no 5xx / INTERNAL / UNKNOWN (TF Serving documents
none for malformed input), no dropped connection, and the server must still serve correctly afterwards.
The default suite sends FUZZ_REQUESTS requests per API; the slow-marked run sends SLOW_FUZZ_REQUESTS."""

import gzip
import http.client
import json
import time
import urllib.parse

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, predict_pb2, regression_pb2)

from tests.serving_helpers import http as http_call

FUZZ_REQUESTS = 1000  # per API (REST, gRPC) in the default suite
SLOW_FUZZ_REQUESTS = 6000  # per API in the slow run: 12,000 in all

MODELS = ["default", "labelled", "half_plus_two_tf1", "missing", "", "..", "../default", "default/../x"]
SIGNATURES = ["", "serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x_to_y2", "nope",
              "__saved_model_init_op"]
ALLOWED_GRPC = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE}


def _mostly(good: list, wild, odds: int = 4):
    """`good` values `odds` times as often as `wild` ones: most requests get past routing to the payload."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda ok: st.sampled_from(good) if ok else wild)


SERVED = ["default", "labelled", "half_plus_two_tf1"]


def _settings(n: int):
    return settings(max_examples=n, deadline=None, database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))


# === REST strategies ===

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
b64 = st.builds(lambda s: {"b64": s}, st.text(max_size=12) | st.binary(max_size=12).map(
    lambda b: __import__("base64").b64encode(b).decode()))
json_values = st.recursive(scalars | b64, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
    st.sampled_from(["x", "inputs", "instances", "b64", "signature_name", "examples", "context"]) | st.text(max_size=6),
    inner, max_size=4), max_leaves=24)
float_tensors = st.recursive(st.floats(width=32) | st.integers(-10, 10), lambda inner: st.lists(inner, max_size=4),
                             max_leaves=16)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"instances": json_values | float_tensors}, optional={
        "signature_name": st.sampled_from(SIGNATURES) | json_values}),
    st.fixed_dictionaries({"inputs": json_values | float_tensors | st.dictionaries(st.sampled_from(["x", "y"]),
                                                                                   float_tensors)},
                          optional={"instances": json_values, "signature_name": st.sampled_from(SIGNATURES)}),
    st.fixed_dictionaries({"examples": json_values | st.lists(st.dictionaries(
        st.sampled_from(["x", "x2", "y"]), json_values | float_tensors, max_size=3), max_size=4)},
        optional={"context": json_values, "signature_name": st.sampled_from(SIGNATURES)}),
)


@st.composite
def rest_requests(draw):
    model = draw(_mostly(SERVED, st.sampled_from(MODELS) | st.text(max_size=10)))
    route = draw(_mostly(["", "", "/versions/123"], st.sampled_from([
        "/versions/124", "/versions/-1", "/versions/99999999999999999999", "/versions/abc", "/labels/stable",
        "/labels/canary", "/labels/nope", "/labels/", "/metadata", "/versions/123/metadata"])))
    verb = draw(_mostly([":predict", ":predict", ":classify", ":regress"],
                        st.sampled_from([":PREDICT", ":nope", "", ":"])))
    prefix = draw(_mostly(["/v1/models/"], st.sampled_from(["/v2/models/", "/", "/v1/", "//v1/models/",
                                                             "/monitoring/prometheus/metrics", "/v1/models"]),
                          odds=8))
    path = urllib.parse.quote(prefix + model + route + verb, safe="/:%")
    if draw(st.booleans()):
        path += "?" + urllib.parse.quote(draw(st.text(max_size=8)))
    method = draw(_mostly(["POST"], st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]), odds=8))
    kind = draw(st.sampled_from(["json"] * 6 + ["garbage", "truncated", "deep", "gzip", "bad_gzip", "empty"]))
    headers = {"Content-Type": "application/json"}
    if kind == "json":
        body = json.dumps(draw(bodies), allow_nan=True).encode()
    elif kind == "garbage":
        body = draw(st.binary(max_size=64))
    elif kind == "truncated":
        text = json.dumps(draw(bodies)).encode()
        body = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif kind == "deep":
        depth = draw(st.integers(1, 5000))
        body = ('{"instances": ' + "[" * depth + "1.0" + "]" * depth + "}").encode()
    elif kind in ("gzip", "bad_gzip"):
        body = gzip.compress(json.dumps(draw(bodies)).encode())
        if kind == "bad_gzip":
            body = body[: draw(st.integers(0, len(body) - 1))] + draw(st.binary(max_size=8))
        headers["Content-Encoding"] = "gzip"
    else:
        body = b""
    return method, path, body, headers


def _check_rest(address: str, method: str, path: str, body: bytes, headers: dict) -> None:
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    context = f"{method} {path} {body[:200]!r} -> {response.status} {payload[:300]!r}"
    assert response.status < 500, context
    if method == "HEAD":
        return
    if path.startswith("/monitoring/") and response.status == 200:
        assert b"# TYPE" in payload, context
        return
    decoded = json.loads(payload)  # every body is JSON (NaN / Infinity tokens included)
    if response.status != 200:
        assert isinstance(decoded, dict) and isinstance(decoded.get("error"), str), context


# === gRPC strategies ===

@st.composite
def tensor_protos(draw):
    proto = tensor_pb2.TensorProto()
    proto.dtype = draw(st.sampled_from([types_pb2.DT_FLOAT] * 4 + [types_pb2.DT_DOUBLE, types_pb2.DT_INT32,
                                        types_pb2.DT_INT64, types_pb2.DT_STRING, types_pb2.DT_BOOL, types_pb2.DT_HALF,
                                        types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT, types_pb2.DT_INVALID,
                                        types_pb2.DT_FLOAT_REF, types_pb2.DT_COMPLEX64, types_pb2.DT_QINT8])
                       | st.integers(0, 200))
    if draw(st.integers(0, 9)) == 0:
        proto.tensor_shape.unknown_rank = True
    for size in draw(st.lists(st.integers(-3, 4) | st.sampled_from([2**31, 2**40, 2**62, -2**40]), max_size=4)):
        proto.tensor_shape.dim.add().size = size
    filler = draw(st.sampled_from(["float", "int", "string", "content", "none", "mixed"]))
    if filler in ("float", "mixed"):
        proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=6)))
    if filler in ("int", "mixed"):
        proto.int_val.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=6)))
    if filler == "string":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=8), max_size=6)))
    if filler == "content":
        proto.tensor_content = draw(st.binary(max_size=48))
    return proto


def _spec(draw, spec, signatures=("", "serving_default")):
    spec.name = draw(_mostly(SERVED, st.sampled_from(MODELS) | st.text(max_size=8)))
    spec.signature_name = draw(_mostly(list(signatures), st.sampled_from(SIGNATURES) | st.text(max_size=8)))
    which = draw(st.sampled_from(["none"] * 4 + ["version", "label"]))
    if which == "version":
        spec.version.value = draw(st.sampled_from([123, 124, 0, -1, 2**63 - 1]) | st.integers(-2**63, 2**63 - 1))
    elif which == "label":
        spec.version_label = draw(st.sampled_from(["stable", "canary", "", "nope"]) | st.text(max_size=6))


def _examples(draw, model_input):
    target = model_input.example_list
    if draw(st.booleans()):
        target = model_input.example_list_with_context
        feature = target.context.features.feature[draw(st.sampled_from(["x", "y"]))]
        feature.float_list.value.extend(draw(st.lists(st.floats(width=32), max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        example = target.examples.add()
        for name in draw(_mostly([["x"]], st.lists(st.sampled_from(["x", "x2", "y"]), max_size=2))):
            kind = draw(st.sampled_from(["float", "float", "int", "bytes"]))
            feature = example.features.feature[name]
            if kind == "float":
                feature.float_list.value.extend(draw(st.lists(st.floats(width=32), max_size=3)))
            elif kind == "int":
                feature.int64_list.value.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=3)))
            else:
                feature.bytes_list.value.extend(draw(st.lists(st.binary(max_size=6), max_size=3)))


@st.composite
def grpc_requests(draw):
    """(method path, serialized request bytes) for the PredictionService / ModelService methods."""
    service = "/tensorflow.serving.PredictionService/"
    kind = draw(st.sampled_from(["Predict"] * 6 + ["Classify", "Regress", "MultiInference", "GetModelMetadata",
                                                   "GetModelStatus", "garbage"]))
    if kind == "Predict":
        request = predict_pb2.PredictRequest()
        _spec(draw, request.model_spec)
        aliases = draw(_mostly([["x"], ["x"], ["x", "y"]], st.lists(st.sampled_from(["x", "inputs", "y"])
                                                                     | st.text(max_size=4), max_size=3)))
        for alias in aliases:
            request.inputs[alias].CopyFrom(draw(tensor_protos()))
        request.output_filter.extend(draw(st.lists(st.sampled_from(["y", "outputs", "nope"]), max_size=2)))
    elif kind in ("Classify", "Regress"):
        request = (classification_pb2.ClassificationRequest if kind == "Classify"
                   else regression_pb2.RegressionRequest)()
        _spec(draw, request.model_spec, ["classify_x_to_y"] if kind == "Classify" else
              ["regress_x_to_y", "regress_x_to_y2"])
        _examples(draw, request.input)
    elif kind == "MultiInference":
        request = inference_pb2.MultiInferenceRequest()
        for _ in range(draw(st.integers(0, 3))):
            task = request.tasks.add()
            _spec(draw, task.model_spec, ["classify_x_to_y", "regress_x_to_y"])
            task.method_name = draw(st.sampled_from(["tensorflow/serving/classify", "tensorflow/serving/regress",
                                                     "tensorflow/serving/predict", ""]))
        _examples(draw, request.input)
    elif kind == "GetModelMetadata":
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        _spec(draw, request.model_spec)
        request.metadata_field.extend(draw(st.lists(st.sampled_from(["signature_def", "nope", ""]), max_size=2)))
    elif kind == "GetModelStatus":
        service = "/tensorflow.serving.ModelService/"
        request = get_model_status_pb2.GetModelStatusRequest()
        _spec(draw, request.model_spec)
    else:
        method = draw(st.sampled_from(["Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata"]))
        return service + method, draw(st.binary(max_size=64))
    return service + kind, request.SerializeToString()


def _check_grpc(channel, method: str, payload: bytes) -> None:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(payload, timeout=60)
    except grpc.RpcError as err:
        context = f"{method} {payload[:200]!r} -> {err.code()} {err.details()}"
        undecodable = err.code() == grpc.StatusCode.INTERNAL and "deserializ" in (err.details() or "").lower()
        # bytes that are no protobuf at all: gRPC itself answers INTERNAL before any servable code runs
        assert err.code() in ALLOWED_GRPC or undecodable, context


# === the tests ===

def _still_healthy(live) -> None:
    assert live.server.process.poll() is None, "the server died"
    assert http_call(live.rest, "POST", "/v1/models/default:predict", {"instances": [2.0]}) == \
        (200, {"predictions": [3.0]})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0], np.float32)))
    assert tf.make_ndarray(live.predictions.Predict(request, timeout=30).outputs["y"]).tolist() == [3.0]


def _fuzz_rest(live, n: int) -> int:
    sent = []

    @_settings(n)
    @given(rest_requests())
    def run(case):
        _check_rest(live.rest, *case)
        sent.append(1)

    run()
    return len(sent)


def _fuzz_grpc(live, n: int) -> int:
    sent = []

    @_settings(n)
    @given(grpc_requests())
    def run(case):
        _check_grpc(live.channel, *case)
        sent.append(1)

    run()
    return len(sent)


# Cases the fuzzer once found, replayed on every run.
FOUND_REST = [
    (b'{"examples": [{"x": 1.0}], "context": {"x": 9223372036854775808}}', 400),
    (b'{"examples": [{"x": -9223372036854775809}]}', 400),
]


@pytest.mark.parametrize("body,status", FOUND_REST)
def test_fuzz_findings_stay_fixed(live, body, status):
    host, port = live.rest.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", "/v1/models/default:classify", body=body,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == status, payload
    if live.kind == "moat":
        assert "outside the int64 range" in payload["error"]


@pytest.mark.parametrize("api", ["rest", "grpc"])
def test_fuzz(live, api):
    started = time.monotonic()
    count = (_fuzz_rest if api == "rest" else _fuzz_grpc)(live, FUZZ_REQUESTS)
    print(f"\nfuzz {api} ({live.kind}): {count} requests in {time.monotonic() - started:.1f}s")
    assert count >= FUZZ_REQUESTS * 0.9  # hypothesis may skip a few duplicate cases
    _still_healthy(live)


@pytest.mark.slow
def test_fuzz_full(live):
    """>= 10,000 requests across REST and gRPC."""
    started = time.monotonic()
    count = _fuzz_rest(live, SLOW_FUZZ_REQUESTS) + _fuzz_grpc(live, SLOW_FUZZ_REQUESTS)
    print(f"\nfuzz full ({live.kind}): {count} requests in {time.monotonic() - started:.1f}s")
    assert count >= 10_000
    _still_healthy(live)
