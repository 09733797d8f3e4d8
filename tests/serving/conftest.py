"""Tiny SavedModels for the serving tests (also loaded by tests/integration/test_server.py by file path)."""
from __future__ import annotations

from app import env as _env  # noqa: F401

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from serving.export import CLASSIFY_METHOD, REGRESS_METHOD, set_method_names


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

    extra = os.path.join(export_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    path = os.path.join(extra, "tf_serving_warmup_requests")
    with tf.io.TFRecordWriter(path) as writer:
        for texts in texts_batches:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "ignored"
            request.model_spec.signature_name = "serving_default"
            request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array(texts, dtype=object)))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def make_broken_version(export_dir: str) -> str:
    os.makedirs(export_dir, exist_ok=True)
    with open(os.path.join(export_dir, "saved_model.pb"), "wb") as handle:
        handle.write(b"this is not a SavedModel")
    return export_dir


@pytest.fixture(scope="session")
def model_templates(tmp_path_factory):
    """Two saved versions built once per session: {1: dir with offset 0.0, 2: dir with offset 1.0}."""
    root = tmp_path_factory.mktemp("templates")
    return {1: save_text_model(str(root / "v1"), offset=0.0), 2: save_text_model(str(root / "v2"), offset=1.0)}


def install_version(templates: dict, base: str, version: int, *, source: int | None = None) -> str:
    target = os.path.join(base, str(version))
    shutil.copytree(templates[source or version], target)
    return target
