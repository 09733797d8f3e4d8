"""Shared helpers for every serving test: tiny SavedModels written by the tests, and a launcher for a live
server (moat-model-server, or the real tensorflow_model_server when $TENSORFLOW_MODEL_SERVER names one).

Import as `from tests.serving_helpers import ...` (pytest runs from the repository root).
"""
from __future__ import annotations


import http.client as http_client
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from moatkit.models.export import CLASSIFY_METHOD, REGRESS_METHOD, set_method_names
from moatkit.serving.process import ServerProcess

REAL_SERVER_ENV = "TENSORFLOW_MODEL_SERVER"
MOAT, REAL = "moat", "tensorflow_model_server"


# === A text model with several signatures (offset tells versions apart) ===

class TinyTextModel(tf.Module):
    """Deterministic outputs computed from string lengths; `offset` tells versions apart."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = tf.Variable(offset, dtype=tf.float32)

    def _probs(self, text):
        n = tf.cast(tf.strings.length(text), tf.float32)
        p_long = tf.sigmoid(n / 7.0 - 1.0 + self.offset)
        return tf.stack([1.0 - p_long, p_long], axis=1)  # (batch, 2)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        probs = self._probs(text)
        label = tf.where(probs[:, 1] > 0.5, tf.constant("long"), tf.constant("short"))
        return {"probabilities": probs, "label": label}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.float32, name="scale")])
    def numeric(self, x, scale):
        return {"y": tf.reduce_sum(x, axis=1) * scale / 3.0 + self.offset}

    def _parse(self, serialized):
        features = tf.io.parse_example(serialized, {"text": tf.io.FixedLenFeature([], tf.string)})
        return features["text"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        probs = self._probs(self._parse(inputs))
        classes = tf.tile(tf.constant([["short", "long"]]), [tf.shape(probs)[0], 1])
        return {"classes": classes, "scores": probs}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": tf.cast(tf.strings.length(self._parse(inputs)), tf.float32) + self.offset}


def save_text_model(export_dir: str, *, offset: float) -> str:
    model = TinyTextModel(offset)
    tf.saved_model.save(model, export_dir, signatures={
        "serving_default": model.serve, "numeric": model.numeric,
        "classify": model.classify, "regress": model.regress})
    set_method_names(Path(export_dir), {"classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD})
    return export_dir


def expected_probs(texts: list[str], offset: float) -> np.ndarray:
    n = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.float32)
    p_long = 1.0 / (1.0 + np.exp(-(n / np.float32(7.0) - 1.0 + offset)))
    return np.stack([1.0 - p_long, p_long], axis=1).astype(np.float32)


def write_warmup(export_dir: str, texts_batches: list[list[str]]) -> str:
    """One PredictionLog(predict_log) record per batch, in assets.extra/tf_serving_warmup_requests."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    requests = []
    for texts in texts_batches:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ignored"
        request.model_spec.signature_name = "serving_default"
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array(texts, dtype=object)))
        requests.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    return write_warmup_logs(export_dir, requests)


def write_warmup_logs(export_dir: str, logs: list) -> str:
    extra = os.path.join(export_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    path = os.path.join(extra, "tf_serving_warmup_requests")
    with tf.io.TFRecordWriter(path) as writer:
        for entry in logs:
            writer.write(entry.SerializeToString())
    return path


def make_broken_version(export_dir: str) -> str:
    os.makedirs(export_dir, exist_ok=True)
    with open(os.path.join(export_dir, "saved_model.pb"), "wb") as handle:
        handle.write(b"this is not a SavedModel")
    return export_dir


def install_version(templates: dict, base: str, version: int, *, source: int | None = None) -> str:
    target = os.path.join(base, str(version))
    shutil.copytree(templates[source or version], target)
    return target


# === "Half plus two": the model of TF Serving's own end-to-end tests, written here in two styles ===
# Signatures as in TF Serving's saved_model_half_plus_two testdata: serving_default (x -> y = 0.5 x + b),
# classify_x_to_y / regress_x_to_y (serialized tf.Example with float feature x -> y) and regress_x_to_y2
# (-> 0.5 x + b + 1). b = 2 gives half-plus-two, b = 3 half-plus-three.

def _example_x(serialized):
    return tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]  # (batch, 1)


class HalfPlus(tf.Module):
    def __init__(self, plus: float):
        super().__init__()
        self.a = tf.Variable(0.5, name="a")
        self.b = tf.Variable(plus, name="b")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x):
        return {"y": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, serialized):
        return {"outputs": self.a * _example_x(serialized) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress2(self, serialized):
        return {"outputs": self.a * _example_x(serialized) + self.b + 1.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, serialized):
        return {"scores": self.a * _example_x(serialized) + self.b}


HALF_PLUS_SIGNATURES = {"classify_x_to_y": CLASSIFY_METHOD, "regress_x_to_y": REGRESS_METHOD,
                        "regress_x_to_y2": REGRESS_METHOD}


def save_half_plus(export_dir: str, *, plus: float = 2.0) -> str:
    """TF2 (tf.Module + tf.saved_model.save) half-plus-`plus`."""
    model = HalfPlus(plus)
    tf.saved_model.save(model, export_dir, signatures={
        "serving_default": model.predict, "classify_x_to_y": model.classify,
        "regress_x_to_y": model.regress, "regress_x_to_y2": model.regress2})
    # tf.saved_model.save marks every signature "predict"; TF Serving's Classify/Regress check the method name
    set_method_names(Path(export_dir), HALF_PLUS_SIGNATURES)
    return export_dir


def save_half_plus_tf1(export_dir: str, *, plus: float = 2.0) -> str:
    """TF1 style: a tf.compat.v1 graph with variables and placeholders, saved by SavedModelBuilder."""
    v1 = tf.compat.v1
    with tf.Graph().as_default(), v1.Session() as session:
        a, b = v1.Variable(0.5, name="a"), v1.Variable(plus, name="b")
        x = v1.placeholder(tf.float32, [None], name="x")
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        parsed = _example_x(serialized)
        y = tf.identity(a * x + b, name="y")
        y_examples = tf.identity(a * parsed + b, name="y_examples")
        y2_examples = tf.identity(a * parsed + b + 1.0, name="y2_examples")
        info = v1.saved_model.utils.build_tensor_info
        build = v1.saved_model.signature_def_utils.build_signature_def
        signatures = {
            "serving_default": build({"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict"),
            "classify_x_to_y": build({"inputs": info(serialized)}, {"scores": info(y_examples)}, CLASSIFY_METHOD),
            "regress_x_to_y": build({"inputs": info(serialized)}, {"outputs": info(y_examples)}, REGRESS_METHOD),
            "regress_x_to_y2": build({"inputs": info(serialized)}, {"outputs": info(y2_examples)}, REGRESS_METHOD),
        }
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(session, [v1.saved_model.tag_constants.SERVING],
                                             signature_def_map=signatures)
        builder.save()
    return export_dir


def copy_version(source: str, base, version: int) -> str:
    """Copies a SavedModel dir to <base>/<version>."""
    target = Path(base) / str(version)
    shutil.copytree(source, target)
    return str(target)


def model_config(models: list[tuple[str, str, str]]) -> str:
    """models: (name, base_path, extra text inside config {})."""
    return "model_config_list {\n" + "".join(
        f'  config {{\n    name: "{name}"\n    base_path: "{base}"\n    model_platform: "tensorflow"\n{extra}  }}\n'
        for name, base, extra in models) + "}\n"


def example_x(value: float) -> bytes:
    example = tf.train.Example()
    example.features.feature["x"].float_list.value.append(value)
    return example.SerializeToString()


class SlowModel(tf.Module):
    """y = max(n) for every row, computed by a loop of max(n) steps (about 2.5 us each): a controllably slow call."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="n")])
    def serve(self, n):
        steps = tf.reduce_max(n)
        i = tf.while_loop(lambda i: i < steps, lambda i: i + 1, [tf.constant(0, tf.int64)])[0]
        return {"y": n * 0 + i}


def save_slow_model(export_dir: str) -> str:
    model = SlowModel()
    tf.saved_model.save(model, export_dir, signatures={"serving_default": model.serve})
    return export_dir


# === A live server ===

def real_server_binary() -> str | None:
    """The tensorflow_model_server named by $TENSORFLOW_MODEL_SERVER (a path or a name on PATH), if any."""
    value = os.environ.get(REAL_SERVER_ENV, "")
    return shutil.which(value) if value else None


def make_server(kind: str = MOAT, *, timeout: float = 180.0, **kwargs) -> ServerProcess:
    """moat-model-server (kind MOAT) or the real binary (kind REAL) with the same flags; not started yet."""
    binary = None
    if kind == REAL:
        binary = real_server_binary()
        if binary is None:
            raise RuntimeError(f"set ${REAL_SERVER_ENV} to a tensorflow_model_server binary")
    return ServerProcess(binary=binary, timeout=timeout, **kwargs)


def start_server(kind: str = MOAT, **kwargs) -> ServerProcess:
    return make_server(kind, **kwargs).start()


def http(address: str, method: str, path: str, body=None, *, headers: dict | None = None,
         timeout: float = 60.0) -> tuple[int, object]:
    """One request on a fresh connection; returns (status, decoded JSON body, or the raw text when not JSON)."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    host, port = address.rsplit(":", 1)
    connection = http_client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    finally:
        connection.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def wait_for(predicate, *, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    """Polls `predicate()` until it returns a truthy value (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:  # noqa: BLE001  (not ready yet)
            last_error = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")
