"""Small TF Serving client helpers (used by the demo and tests).

They use only urllib and the standard `tensorflow_serving.apis` stubs, so they work against moat-model-server
and the real tensorflow_model_server alike, and double as examples of unmodified clients.
"""
from __future__ import annotations


import json
import time
import urllib.error
import urllib.request

import numpy as np


class RestError(Exception):
    """A non-2xx REST answer; `status` is the HTTP code, `message` the server's `error` text."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


def _model_path(model: str, version: int | None = None, label: str | None = None) -> str:
    path = f"/v1/models/{model}"
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label:
        path += f"/labels/{label}"
    return path


def rest_request(host_port: str, path: str, body: dict | None = None, *, timeout: float = 30.0) -> dict:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(f"http://{host_port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode("utf-8", "replace")
        try:
            message = json.loads(text).get("error", text)
        except ValueError:
            message = text
        raise RestError(err.code, message) from None


def rest_predict(host_port: str, model: str, instances: list, signature_name: str | None = None,
                 version: int | None = None, *, label: str | None = None, timeout: float = 30.0) -> dict:
    """POST :predict in row format; returns the decoded body ({"predictions": ...})."""
    body: dict = {"instances": instances}
    if signature_name:
        body["signature_name"] = signature_name
    return rest_request(host_port, _model_path(model, version, label) + ":predict", body, timeout=timeout)


def rest_status(host_port: str, model: str, *, version: int | None = None, timeout: float = 10.0) -> dict:
    return rest_request(host_port, _model_path(model, version), timeout=timeout)


def open_channel(host_port: str):
    """An insecure channel without a receive-size cap (responses can hold big tensors)."""
    import grpc

    return grpc.insecure_channel(host_port, options=[("grpc.max_receive_message_length", -1)])


def grpc_predict(host_port: str, model: str, inputs: dict[str, np.ndarray], signature_name: str = "serving_default",
                 output_filter=(), *, version: int | None = None, timeout: float = 30.0,
                 channel=None) -> dict[str, np.ndarray]:
    """Predict; pass an open `channel` to reuse one connection across calls (as a long-lived client does)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    if channel is None:
        with open_channel(host_port) as own:
            response = prediction_service_pb2_grpc.PredictionServiceStub(own).Predict(request, timeout=timeout)
    else:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def grpc_metadata(host_port: str, model: str, *, version: int | None = None, timeout: float = 10.0):
    """GetModelMetadata; returns {signature name: SignatureDef proto}."""
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = int(version)
    request.metadata_field.append("signature_def")
    with open_channel(host_port) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
            request, timeout=timeout)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    return dict(signature_map.signature_def)


def grpc_model_status(host_port: str, model: str, *, version: int | None = None,
                      timeout: float = 10.0) -> list[dict]:
    """GetModelStatus; returns [{"version": int, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]."""
    from tensorflow.core.protobuf import error_codes_pb2
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = int(version)
    with open_channel(host_port) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=timeout)
    return [{"version": s.version, "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
             "error_code": error_codes_pb2.Code.Name(s.status.error_code), "error_message": s.status.error_message}
            for s in response.model_version_status]


def wait_until_available(model: str, *, rest: str | None = None, grpc_target: str | None = None,
                         version: int | None = None, timeout: float = 60.0) -> list[dict]:
    """Polls REST (or gRPC) model status until some (or the given) version is AVAILABLE; returns the status."""
    if not rest and not grpc_target:
        raise ValueError("pass rest='host:port' or grpc_target='host:port'")
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if rest:
                states = [{"version": int(s["version"]), "state": s["state"]}
                          for s in rest_status(rest, model)["model_version_status"]]
            else:
                states = grpc_model_status(grpc_target, model)
            if any(s["state"] == "AVAILABLE" and (version is None or s["version"] == version) for s in states):
                return states
        except Exception as err:  # server not up yet: keep polling until the deadline
            last_error = err
        time.sleep(0.2)
    raise TimeoutError(f"model {model!r} not AVAILABLE after {timeout:.0f}s (last error: {last_error})")
