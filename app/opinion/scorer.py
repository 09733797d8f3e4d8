"""Sentiment of stream items from an exported classifier: in-process (the SavedModel) or the served model over
gRPC, several batches in flight so the server's batching has work to merge.

Both answer `probabilities(texts) -> (n, labels)`; `sentiments` turns them into negative / neutral / positive with
a decision fitted on the gold dev split: a three-class model's argmax after a bias per class (`log_bias`), a
two-class (negative / positive) model's neutral where p(positive) lies in `neutral_band`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from moatkit.data.core.errors import ModelError
from moatkit.models.export import TFLITE_FILE

SENTIMENTS = ("negative", "neutral", "positive")


def model_labels(version_dir: str | Path) -> list[str]:
    from moatkit.models.export import SOURCE_FILE, source_of

    labels = source_of(version_dir).get("labels")
    if not labels or "negative" not in labels or "positive" not in labels:
        raise ModelError(f"'{version_dir}' is not a sentiment classifier (labels {labels} in {SOURCE_FILE})",
                         fix="export a model trained on negative/positive (and neutral) labels with `moat export`")
    return list(labels)


def sentiments(probabilities: np.ndarray, labels: list[str], *, neutral_band: list[float] | None = None,
               log_bias: list[float] | None = None) -> np.ndarray:
    """(n, labels) probabilities → (n,) indices into SENTIMENTS. A three-class model: the argmax of log p + log_bias
    (per label; none: plain argmax). A two-class model: neutral where p(positive) is inside neutral_band [lo, hi]
    (none: never neutral)."""
    if "neutral" in labels:
        scores = np.log(np.maximum(probabilities, 1e-12)) + (np.asarray(log_bias) if log_bias is not None else 0.0)
        picked = np.asarray(labels)[scores.argmax(axis=1)]
        return np.array([SENTIMENTS.index(p) for p in picked], dtype=np.int64)
    positive = probabilities[:, labels.index("positive")]
    low, high = neutral_band or (0.5, 0.5)
    return np.where(positive < low, 0, np.where(positive > high, 2, 1)).astype(np.int64)


def length_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Index batches of texts of similar length: the exported graph pads a batch to its longest text, so sorting
    first saves the padded positions (measured on BBC sentences: see docs/results.md)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(texts), batch_size)]


def _in_order(batches: list[np.ndarray], results: list[np.ndarray]) -> np.ndarray:
    out = np.empty((sum(len(b) for b in batches), results[0].shape[1]), np.float32)
    for index, result in zip(batches, results):
        out[index] = result
    return out


class LocalScorer:
    """The version in-process: its model.tflite when there is one (what moat-model-server serves with
    --prefer_tflite_model, so both paths give the same scores), else the SavedModel."""

    def __init__(self, version_dir: str | Path, *, batch_size: int = 32, prefer_tflite: bool = True):
        self.labels = model_labels(version_dir)
        self.batch_size = batch_size
        tflite = Path(version_dir) / TFLITE_FILE
        self.engine = "tflite" if prefer_tflite and tflite.is_file() else "saved_model"
        if self.engine == "tflite":
            from moatkit.serving.tflite_servable import make_interpreter

            self._runner = make_interpreter(model_path=str(tflite), num_threads=os.cpu_count() or 1
                                            ).get_signature_runner("serving_default")
        else:
            import tensorflow as tf
            import tensorflow_text  # noqa: F401  (registers the tokenizer ops of the exported graph)

            self._signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]

    def _batch(self, texts: list[str]) -> np.ndarray:
        if self.engine == "tflite":
            return self._runner(text=np.array(texts, dtype=object))["probabilities"]
        import tensorflow as tf

        return self._signature(text=tf.constant(texts))["probabilities"].numpy()

    def probabilities(self, texts: list[str], *, progress: str | None = None) -> np.ndarray:
        """(n, labels); `progress` names a bar shown for long inputs."""
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        batches = length_batches(texts, self.batch_size)
        if progress is not None and len(batches) >= 8:
            from tqdm.auto import tqdm  # not in the Beam venv, which never asks for a bar

            batches_shown = tqdm(batches, desc=progress, unit="batch", leave=False)
        else:
            batches_shown = batches
        return _in_order(batches, [self._batch([texts[i] for i in b]) for b in batches_shown])


class GrpcScorer:
    """PredictionService.Predict on `model` (labels from its version dir or given), `in_flight` batches at once."""

    def __init__(self, address: str, model: str, labels: list[str], *, batch_size: int = 32, in_flight: int = 4,
                 timeout_s: float = 30.0):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        from moatkit.serving.client import open_channel

        self.labels, self.model, self.batch_size, self.in_flight, self.timeout_s = labels, model, batch_size, in_flight, timeout_s
        self._channel = open_channel(address)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _request(self, texts: list[str]):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = "serving_default"
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(list(texts), dtype=tf.string))
        request.output_filter.append("probabilities")
        return self._stub.Predict.future(request, timeout=self.timeout_s)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        import tensorflow as tf

        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        batches = length_batches(texts, self.batch_size)
        results, futures = [], []
        for batch in batches:
            futures.append(self._request([texts[i] for i in batch]))
            if len(futures) >= self.in_flight:
                results.append(tf.make_ndarray(futures.pop(0).result().outputs["probabilities"]))
        results += [tf.make_ndarray(f.result().outputs["probabilities"]) for f in futures]
        return _in_order(batches, results)

    def close(self) -> None:
        self._channel.close()
