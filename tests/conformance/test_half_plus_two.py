"""TF Serving's own end-to-end scenarios (tensorflow_model_server_test.py) on half-plus-two models written by
the tests, against a live server: status, metadata, classify, regress, predict (gRPC, REST row and columnar),
multi-inference, several models from one config file, version labels, and the exact error codes and messages
for unknown models, versions, labels and signatures."""

import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, predict_pb2, regression_pb2)

from tests.serving_helpers import example_x, http

RPC_TIMEOUT = 30


def _spec(request_spec, *, name="default", signature="", version=None, label=None):
    request_spec.name = name
    request_spec.signature_name = signature
    if version is not None:
        request_spec.version.value = version
    if label is not None:
        request_spec.version_label = label


def _predict_request(x=(2.0,), **spec):
    request = predict_pb2.PredictRequest()
    _spec(request.model_spec, **spec)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(x, np.float32)))
    return request


def _assert_spec(spec, name, signature, version):
    assert (spec.name, spec.signature_name, spec.version.value) == (name, signature, version)


# === ModelService / metadata ===

def test_get_model_status(live):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = live.models.GetModelStatus(request, timeout=RPC_TIMEOUT)
    assert len(result.model_version_status) == 1
    status = result.model_version_status[0]
    assert status.version == 123
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert (status.status.error_code, status.status.error_message) == (0, "")


def test_get_status_rest(live):
    assert http(live.rest, "GET", "/v1/models/default") == (200, {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    status, body = http(live.rest, "GET", "/v1/models/labelled")
    assert status == 200
    assert sorted(s["version"] for s in body["model_version_status"]) == ["123", "124"]
    assert http(live.rest, "GET", "/v1/models/labelled/labels/canary")[1]["model_version_status"][0]["version"] \
        == "124"
    assert http(live.rest, "GET", "/v1/models/labelled/versions/123")[1]["model_version_status"][0]["version"] \
        == "123"


def test_get_model_metadata(live):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    result = live.predictions.GetModelMetadata(request, timeout=RPC_TIMEOUT)
    assert (result.model_spec.name, result.model_spec.version.value) == ("default", 123)
    assert list(result.metadata) == ["signature_def"]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    result.metadata["signature_def"].Unpack(signatures)
    defs = signatures.signature_def
    assert {"serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x_to_y2"} <= set(defs)
    assert defs["serving_default"].inputs["x"].dtype == types_pb2.DT_FLOAT
    assert defs["serving_default"].outputs["y"].dtype == types_pb2.DT_FLOAT
    assert defs["classify_x_to_y"].method_name == "tensorflow/serving/classify"
    assert defs["regress_x_to_y"].method_name == "tensorflow/serving/regress"


def test_get_model_metadata_rest(live):
    status, body = http(live.rest, "GET", "/v1/models/default/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert defs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert defs["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert defs["serving_default"]["inputs"]["x"]["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}],
                                                                       "unknown_rank": False}
    assert defs["regress_x_to_y2"]["outputs"]["outputs"]["dtype"] == "DT_FLOAT"


# === PredictionService: classify, regress, multi-inference, predict ===

@pytest.mark.parametrize("model", ["default", "half_plus_two_tf1"])
def test_classify(live, model):
    request = classification_pb2.ClassificationRequest()
    _spec(request.model_spec, name=model, signature="classify_x_to_y")
    request.input.example_list.examples.add().ParseFromString(example_x(2.0))
    result = live.predictions.Classify(request, timeout=RPC_TIMEOUT)
    assert len(result.result.classifications) == 1
    assert [(c.label, c.score) for c in result.result.classifications[0].classes] == [("", 3.0)]
    _assert_spec(result.model_spec, model, "classify_x_to_y", 123)


@pytest.mark.parametrize("model", ["default", "half_plus_two_tf1"])
def test_regress(live, model):
    request = regression_pb2.RegressionRequest()
    _spec(request.model_spec, name=model, signature="regress_x_to_y")
    request.input.example_list.examples.add().ParseFromString(example_x(2.0))
    result = live.predictions.Regress(request, timeout=RPC_TIMEOUT)
    assert [r.value for r in result.result.regressions] == [3.0]
    _assert_spec(result.model_spec, model, "regress_x_to_y", 123)
    request.model_spec.signature_name = "regress_x_to_y2"
    assert [r.value for r in live.predictions.Regress(request, timeout=RPC_TIMEOUT).result.regressions] == [4.0]


def test_multi_inference(live):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "tensorflow/serving/regress"),
                              ("classify_x_to_y", "tensorflow/serving/classify")):
        task = request.tasks.add()
        _spec(task.model_spec, signature=signature)
        task.method_name = method
    request.input.example_list.examples.add().ParseFromString(example_x(2.0))
    result = live.predictions.MultiInference(request, timeout=RPC_TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i, signature in enumerate(("regress_x_to_y", "classify_x_to_y")):
        _assert_spec(result.results[i].model_spec, "default", signature, 123)


@pytest.mark.parametrize("model, expected", [("default", 3.0), ("half_plus_two_tf1", 3.0),
                                             ("half_plus_three", 4.0)])
@pytest.mark.parametrize("specify_output", [True, False])
def test_predict_grpc(live, model, expected, specify_output):
    """VerifyPredictRequest: x = [2.0] as a raw TensorProto (dtype, float_val, one dim)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    result = live.predictions.Predict(request, timeout=RPC_TIMEOUT)
    assert list(result.outputs) == ["y"]
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert tf.make_ndarray(result.outputs["y"]).tolist() == [expected]
    _assert_spec(result.model_spec, model, "serving_default", 123)


def test_predict_rest_row_and_columnar(live):
    assert http(live.rest, "POST", "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]}) == \
        (200, {"predictions": [3.0, 3.5, 4.0]})
    assert http(live.rest, "POST", "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]}) == \
        (200, {"outputs": [3.0, 3.5, 4.0]})
    assert http(live.rest, "POST", "/v1/models/half_plus_two_tf1/versions/123:predict",
                {"instances": [{"x": 1.0}, {"x": -4.0}]}) == (200, {"predictions": [2.5, 0.0]})
    assert http(live.rest, "POST", "/v1/models/half_plus_three:predict", {"inputs": {"x": [2.0]}}) == \
        (200, {"outputs": [4.0]})


def test_classify_and_regress_rest(live):
    assert http(live.rest, "POST", "/v1/models/default:classify",
                {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}) == (200, {"results": [[["", 3.0]]]})
    assert http(live.rest, "POST", "/v1/models/default:regress",
                {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 4.0}]}) == \
        (200, {"results": [3.0, 4.0]})
    assert http(live.rest, "POST", "/v1/models/half_plus_two_tf1:regress",
                {"signature_name": "regress_x_to_y2", "context": {"x": 6.0}, "examples": [{}]}) == \
        (200, {"results": [6.0]})


def test_version_labels(live):
    """labelled: stable -> 123 (half plus two), canary -> 124 (half plus three); the default is the latest."""
    for label, version, expected in (("stable", 123, 3.0), ("canary", 124, 4.0)):
        result = live.predictions.Predict(_predict_request(name="labelled", label=label), timeout=RPC_TIMEOUT)
        assert tf.make_ndarray(result.outputs["y"]).tolist() == [expected]
        assert result.model_spec.version.value == version
        assert http(live.rest, "POST", f"/v1/models/labelled/labels/{label}:predict", {"instances": [2.0]}) == \
            (200, {"predictions": [expected]})
    latest = live.predictions.Predict(_predict_request(name="labelled"), timeout=RPC_TIMEOUT)
    assert latest.model_spec.version.value == 124
    pinned = live.predictions.Predict(_predict_request(name="labelled", version=123), timeout=RPC_TIMEOUT)
    assert tf.make_ndarray(pinned.outputs["y"]).tolist() == [3.0]


def test_concurrent_requests_through_the_batcher(live):
    """--enable_batching: 24 concurrent single- and multi-row requests each get their own rows back."""
    results, errors = {}, []

    def call(i):
        try:
            x = [float(i), float(i) + 0.5][: 1 + i % 2]
            if i % 2:
                out = live.predictions.Predict(_predict_request(x), timeout=RPC_TIMEOUT)
                results[i] = (x, tf.make_ndarray(out.outputs["y"]).tolist())
            else:
                results[i] = (x, http(live.rest, "POST", "/v1/models/default:predict", {"instances": x})[1][
                    "predictions"])
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 24
    for x, y in results.values():
        assert y == [0.5 * v + 2.0 for v in x]


# === Errors: TF Serving's codes and messages ===

@pytest.mark.parametrize("spec, code, message", [
    ({"name": "missing"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(missing)"),
    ({"version": 999}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(default, 999)"),
    ({"name": "labelled", "label": "nope"}, grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: nope"),
    ({"signature": "nope"}, grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
])
def test_grpc_predict_errors(live, spec, code, message):
    with pytest.raises(grpc.RpcError) as err:
        live.predictions.Predict(_predict_request(**spec), timeout=RPC_TIMEOUT)
    assert (err.value.code(), err.value.details()) == (code, message)


@pytest.mark.parametrize("spec, message", [
    ({"name": "missing"}, "Could not find any versions of model missing"),
    ({"version": 999}, "Could not find version 999 of model default"),
])
def test_grpc_status_errors(live, spec, message):
    request = get_model_status_pb2.GetModelStatusRequest()
    _spec(request.model_spec, **spec)
    with pytest.raises(grpc.RpcError) as err:
        live.models.GetModelStatus(request, timeout=RPC_TIMEOUT)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.NOT_FOUND, message)


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/v1/models/missing:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Latest(missing)"),
    ("POST", "/v1/models/default/versions/999:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Specific(default, 999)"),
    ("POST", "/v1/models/labelled/labels/nope:predict", {"instances": [1.0]}, 400,
     "Unrecognized servable version label: nope"),
    ("POST", "/v1/models/default:predict", {"instances": [1.0], "signature_name": "nope"}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("GET", "/v1/models/missing", None, 404, "Could not find any versions of model missing"),
    ("GET", "/v1/models/default/versions/999", None, 404, "Could not find version 999 of model default"),
    ("GET", "/v1/models/missing/metadata", None, 404, "Servable not found for request: Latest(missing)"),
])
def test_rest_errors(live, method, path, body, status, message):
    assert http(live.rest, method, path, body) == (status, {"error": message})
