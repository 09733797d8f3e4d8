"""The assistant's two served models, reached in-process (build, evaluation) or over gRPC (the chat service).

Both answer `both(texts) -> (embeddings (n, dim) unit-length, router probabilities (n, departments) or None)`.
Over gRPC the encoder and router calls go out together (futures), so a turn waits for the slower one, not the sum.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from moatkit.data.core.errors import ModelError


def router_labels(version_dir: Path) -> list[str]:
    from moatkit.models.export import SOURCE_FILE, source_of

    labels = source_of(version_dir).get("labels")
    if not labels:
        raise ModelError(f"'{version_dir}' has no labels in {SOURCE_FILE}", fix="export the router with `moat export`")
    return list(labels)


def embed_texts(models, texts: list[str]) -> dict[str, np.ndarray]:
    """text → embedding, each distinct text encoded once."""
    unique = list(dict.fromkeys(texts))
    return dict(zip(unique, models.encode(unique, progress="embedding")))


class LocalModels:
    """The exported SavedModels loaded with tf.saved_model.load: the same graphs the server runs."""

    def __init__(self, encoder_dir: str | Path, router_dir: str | Path | None = None, *, batch_size: int = 64):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the text ops the exported tokenizers call in-graph)

        self._encoder = tf.saved_model.load(str(encoder_dir)).signatures["serving_default"]
        self._router = tf.saved_model.load(str(router_dir)).signatures["serving_default"] if router_dir else None
        self.labels = router_labels(Path(router_dir)) if router_dir else None
        self.batch_size = batch_size

    def _batched(self, signature, key: str, texts: list[str], progress: str | None) -> np.ndarray:
        import tensorflow as tf
        from tqdm.auto import tqdm

        starts = range(0, len(texts), self.batch_size)
        bar = tqdm(starts, desc=progress, unit="batch", disable=progress is None or len(starts) < 4, leave=False)
        return np.concatenate([signature(text=tf.constant(texts[i:i + self.batch_size]))[key].numpy() for i in bar])

    def encode(self, texts: list[str], *, progress: str | None = None) -> np.ndarray:
        return self._batched(self._encoder, "embedding", list(texts), progress)

    def route(self, texts: list[str]) -> np.ndarray | None:
        return None if self._router is None else self._batched(self._router, "probabilities", list(texts), None)

    def both(self, texts: list[str]):
        return self.encode(texts), self.route(texts)


class GrpcModels:
    """PredictionService calls on one long-lived channel; `labels` come from the build (support.json)."""

    def __init__(self, address: str, *, encoder: str, router: str | None = None, labels: list[str] | None = None,
                 timeout_s: float = 5.0):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        from moatkit.serving.client import open_channel

        self.address, self.encoder, self.router, self.labels, self.timeout_s = address, encoder, router, labels, timeout_s
        self._channel = open_channel(address)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _request(self, model: str, texts: list[str]):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = "serving_default"
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(list(texts), dtype=tf.string))
        return self._stub.Predict.future(request, timeout=self.timeout_s)

    def both(self, texts: list[str]):
        import tensorflow as tf

        encoded = self._request(self.encoder, texts)
        routed = self._request(self.router, texts) if self.router else None
        embeddings = tf.make_ndarray(encoded.result().outputs["embedding"])
        probabilities = tf.make_ndarray(routed.result().outputs["probabilities"]) if routed else None
        return embeddings, probabilities

    def close(self) -> None:
        self._channel.close()
