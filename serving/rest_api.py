"""TF Serving's HTTP/REST API (tensorflow_serving/g3doc/api_rest.md) as (method, path, body) → (status, JSON text),
independent of the HTTP plumbing (serving/rest.py).

Routes (case-insensitive, like TF Serving's regexes):
  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]            model version status
  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata   signature defs
  POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict|:classify|:regress
  GET  /monitoring/prometheus/metrics                      when enabled by --monitoring_config_file
Errors are `{"error": "..."}` with TF Serving's canonical-code -> HTTP status mapping.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import re
import threading
import urllib.parse
from collections import Counter

import tensorflow as tf
from google.protobuf import json_format

from moatkit.serving import tensors
from moatkit.serving.model_manager import ModelManager
from moatkit.serving.servable import Servable
from moatkit.serving.tensors import ServingError, invalid

log = logging.getLogger("moat.serving")

# From TF Serving's http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}

_SPEC = r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
PREDICTION_PATH = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                         re.IGNORECASE)
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def proto_json(message) -> dict:
    return json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True,
                                                always_print_fields_with_no_presence=True))


class RequestCounter:
    """Per-model request counts for the Prometheus page (named like TF Serving's own metrics)."""

    def __init__(self):
        self._counts: Counter = Counter()
        self._lock = threading.Lock()
        self.extra_sources: list = []  # callables returning more Prometheus text (e.g. batching metrics)

    def add(self, *, api: str, model: str, code: str) -> None:
        with self._lock:
            self._counts[(api, model, code)] += 1

    def prometheus_text(self) -> str:
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (api, model, code), count in sorted(self._counts.items()):
                lines.append(f':tensorflow:serving:request_count{{model_name="{model}",status="{code}",'
                             f'api="{api}"}} {count}')
        return "\n".join(lines) + "\n" + "".join(source() for source in self.extra_sources)


class RestApi:
    """Turns (method, path, body) into (HTTP status, JSON text); used by the HTTP handler and by tests."""

    def __init__(self, manager: ModelManager, *, timeout_ms: int = 30000, counter: RequestCounter | None = None,
                 prometheus_path: str | None = None):
        self.manager = manager
        self.timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
        self.counter = counter or RequestCounter()
        self.prometheus_path = prometheus_path
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="moat-rest")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, str]:
        """Returns (status, content type, text)."""
        path = urllib.parse.urlsplit(path).path
        if self.prometheus_path and path == self.prometheus_path and method == "GET":
            return 200, "text/plain; version=0.0.4", self.counter.prometheus_text()
        model = ""
        try:
            if not re.match(r"(?i)/v1/", path):
                raise ServingError("NOT_FOUND", f"Unsupported path: {path}")
            match = PREDICTION_PATH.fullmatch(path) if method == "POST" else None
            if match:
                model = urllib.parse.unquote(match.group(1))
                version = int(match.group(2)) if match.group(2) else None
                label = urllib.parse.unquote(match.group(3)) if match.group(3) else None
                verb = match.group(4).lower()
                text = self._with_deadline(self._predict_like, verb, model, version, label, body)
                self.counter.add(api=verb, model=model, code="OK")
                return 200, "application/json", text
            match = STATUS_PATH.fullmatch(path) if method == "GET" else None
            if match:
                model = urllib.parse.unquote(match.group(1) or "")
                version = int(match.group(2)) if match.group(2) else None
                label = urllib.parse.unquote(match.group(3)) if match.group(3) else None
                if not model:
                    raise invalid("Missing model name in request.")
                if match.group(4):
                    return 200, "application/json", self._metadata(model, version, label)
                return 200, "application/json", self._status(model, version, label)
            raise invalid(f"Malformed request: {method} {path}")
        except RecursionError:  # pathologically nested JSON: a client error, not a server one
            return 400, "application/json", json.dumps({"error": "JSON Value is nested too deeply"})
        except ServingError as err:
            if model:
                self.counter.add(api="rest", model=model, code=err.code)
            return HTTP_STATUS.get(err.code, 500), "application/json", json.dumps({"error": err.message})
        except Exception as err:  # a bug: answer like TF Serving's INTERNAL instead of dropping the connection
            log.exception("REST %s %s failed", method, path)
            if model:
                self.counter.add(api="rest", model=model, code="INTERNAL")
            return 500, "application/json", json.dumps({"error": f"{type(err).__name__}: {err}"})

    def _with_deadline(self, fn, *args):
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None

    # -- endpoints --

    def _status(self, model: str, version: int | None, label: str | None) -> str:
        from tensorflow.core.protobuf import error_codes_pb2
        from tensorflow_serving.apis import get_model_status_pb2

        if label:
            version = self.manager.resolve_label(model, label)
        response = get_model_status_pb2.GetModelStatusResponse()
        for state in self.manager.version_status(model, version=version):
            entry = response.model_version_status.add(version=state.version)
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            entry.status.error_code = error_codes_pb2.Code.Value(state.error_code)
            entry.status.error_message = state.error_message
        return json.dumps(proto_json(response), indent=1)

    def _metadata(self, model: str, version: int | None, label: str | None) -> str:
        from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

        servable = self.manager.get_servable(model, version=version, label=label)
        spec = model_pb2.ModelSpec(name=model)
        spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        return json.dumps({"model_spec": proto_json(spec), "metadata": {"signature_def": proto_json(signature_map)}},
                          indent=1)

    def _predict_like(self, verb: str, model: str, version, label, raw: bytes) -> str:
        servable = self.manager.get_servable(model, version=version, label=label, route=True)
        body = tensors.load_json_body(raw)
        signature = body.get("signature_name", "") or "serving_default"
        if verb == "predict":
            return _predict(servable, signature, body, self.manager.request_logger(model), version, label)
        examples = _examples_from_json(body, verb)
        logger = self.manager.request_logger(model)
        if verb == "classify":
            results = servable.classify(examples, signature_name=signature)
            if logger is not None and logger.sample():
                _log_examples(logger, "classify", servable, signature, examples, results, version, label)
            rows = ["[" + ", ".join(f"[{json.dumps(label_)}, {tensors.format_float(score, 'float32')}]"
                                    for label_, score in row) + "]" for row in results]
            return '{"results": [' + ", ".join(rows) + "]}"
        values = servable.regress(examples, signature_name=signature)
        if logger is not None and logger.sample():
            _log_examples(logger, "regress", servable, signature, examples, values, version, label)
        return '{"results": [' + ", ".join(tensors.format_float(v, "float32") for v in values) + "]}"


def _request_spec(spec, servable: Servable, signature: str, version, label) -> None:
    spec.name, spec.signature_name = servable.name, signature
    if version is not None:
        spec.version.value = version
    elif label:
        spec.version_label = label


def _log_examples(logger, verb: str, servable: Servable, signature: str, examples: list[bytes], results,
                  version, label) -> None:
    """Logs a REST :classify/:regress call as the ClassificationRequest/RegressionRequest it corresponds to."""
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    if verb == "classify":
        request, response = classification_pb2.ClassificationRequest(), classification_pb2.ClassificationResponse()
        for row in results:
            classifications = response.result.classifications.add()
            for label_, score in row:
                classifications.classes.add(label=label_, score=score)
    else:
        request, response = regression_pb2.RegressionRequest(), regression_pb2.RegressionResponse()
        for value in results:
            response.result.regressions.add(value=value)
    _request_spec(request.model_spec, servable, signature, version, label)
    _request_spec(response.model_spec, servable, signature, servable.version, None)
    for serialized in examples:
        request.input.example_list.examples.add().ParseFromString(serialized)
    logger.write(f"{verb}_log", request, response, version=servable.version, signature_name=signature)


def _predict(servable: Servable, signature: str, body: dict, logger=None, version=None, label=None) -> str:
    if signature not in servable.signature_defs:
        raise invalid(f'Serving signature name: "{signature}" not found in signature def')
    arrays, fmt = tensors.parse_predict_request(body, servable.input_dtypes(signature))
    outputs = servable.predict(arrays, signature_name=signature)
    if logger is not None and logger.sample():  # logged as the PredictRequest/Response a gRPC client would use
        from tensorflow_serving.apis import predict_pb2

        request, response = predict_pb2.PredictRequest(), predict_pb2.PredictResponse()
        _request_spec(request.model_spec, servable, signature, version, label)
        _request_spec(response.model_spec, servable, signature, servable.version, None)
        for alias, array in arrays.items():
            request.inputs[alias].CopyFrom(tensors.to_tensor_proto(array))
        for alias, array in outputs.items():
            response.outputs[alias].CopyFrom(tensors.to_tensor_proto(array))
        logger.write("predict_log", request, response, version=servable.version, signature_name=signature)
    return tensors.predict_response_json(outputs, fmt)


def _feature_from_json(name: str, values, feature) -> None:
    for value in values if isinstance(values, list) else [values]:
        if value is None or isinstance(value, list) or (isinstance(value, dict) and not tensors.is_b64(value)):
            raise invalid(f"Feature: {name} has element with unexpected JSON type: {tensors.json_type(value)}")
        if isinstance(value, bool) or isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise invalid(f"Feature: {name} has element with value {value} outside the int64 range")
            kind, item = "int64_list", int(value)
        elif isinstance(value, float):
            kind, item = "float_list", value
        elif isinstance(value, str):
            kind, item = "bytes_list", value.encode("utf-8")
        else:
            kind, item = "bytes_list", tensors.json_scalar(value, tf.string)
        current = feature.WhichOneof("kind")
        if current not in (None, kind):
            raise invalid(f"Unexpected element type in feature: {name} expecting type: {current.split('_')[0]}")
        getattr(feature, kind).value.append(item)


def _examples_from_json(body: dict, verb: str) -> list[bytes]:
    def to_example(obj, base=None):
        if not isinstance(obj, dict):
            raise invalid(f"Example must be JSON object but got JSON {tensors.json_type(obj)}")
        example = tf.train.Example()
        if base is not None:
            example.CopyFrom(base)
        for name, values in obj.items():
            feature = tf.train.Feature()
            _feature_from_json(name, values, feature)
            example.features.feature[name].CopyFrom(feature)
        return example

    context = to_example(body["context"]) if "context" in body else None
    examples = body.get("examples")
    if examples is None:
        raise invalid(f"JSON Value: {json.dumps(body)} When method is {verb}, key 'examples' is expected "
                      "and was not found")
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {json.dumps(body)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {json.dumps(body)} 'examples' value is an empty array")
    return [to_example(e, context).SerializeToString() for e in examples]
