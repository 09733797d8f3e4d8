"""Runs an exported text model version offline: its `serving_default` (probabilities or score) and its `embed`
signature (sentence embeddings for the drift test), in batches, on texts read from logs or a dev split."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from moatkit.serving.errors import ServingConfigError

BATCH = 64


class VersionModel:
    def __init__(self, version_dir: str | Path):
        import tensorflow as tf
        try:
            import tensorflow_text  # noqa: F401  (registers the text ops the exported graph calls)
        except ImportError:
            pass

        self.version_dir = Path(version_dir)
        if not (self.version_dir / "saved_model.pb").is_file():
            raise ServingConfigError(f"'{self.version_dir}' holds no saved_model.pb",
                                     fix="pass a model version dir <repo>/<model>/<version>")
        self._loaded = tf.saved_model.load(str(self.version_dir))
        self.signatures = dict(self._loaded.signatures)
        default = self.signatures.get("serving_default")
        inputs = default.structured_input_signature[1] if default is not None else {}
        if "text" not in inputs or inputs["text"].dtype != tf.string:
            raise ServingConfigError(
                f"'{self.version_dir}': serving_default takes {sorted(inputs) or 'no inputs'}, not a string 'text'",
                fix="moat monitor watches text models exported by `moat export` (raw strings in)")

    @property
    def has_embeddings(self) -> bool:
        return "embed" in self.signatures

    def _run(self, signature: str, texts: list[str], key: str) -> np.ndarray:
        import tensorflow as tf

        function = self.signatures[signature]
        if key not in function.structured_outputs:
            raise ServingConfigError(f"'{self.version_dir}': {signature} has no '{key}' output "
                                     f"(it has {sorted(function.structured_outputs)})",
                                     fix="export the model with `moat export`")
        chunks = [function(text=tf.constant(texts[i:i + BATCH], tf.string))[key].numpy()
                  for i in range(0, len(texts), BATCH)]
        return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)

    def probabilities(self, texts: list[str]) -> np.ndarray:  # (batch, labels)
        outputs = self.signatures["serving_default"].structured_outputs
        if "probabilities" not in outputs:
            raise ServingConfigError(f"'{self.version_dir}': serving_default has no 'probabilities' output",
                                     fix="monitoring estimates accuracy for classifiers; a regressor gets drift only")
        return self._run("serving_default", texts, "probabilities").astype(np.float32)

    def scores(self, texts: list[str]) -> np.ndarray:  # (batch,)
        return self._run("serving_default", texts, "score").astype(np.float32)

    def embeddings(self, texts: list[str]) -> np.ndarray:  # (batch, hidden)
        if not self.has_embeddings:
            raise ServingConfigError(f"'{self.version_dir}' has no 'embed' signature",
                                     fix="export it again with `moat export` (older exports lack it), or set "
                                         "embedding_drift: false")
        return self._run("embed", texts, "embedding").astype(np.float32)

    @property
    def is_classifier(self) -> bool:
        return "probabilities" in self.signatures["serving_default"].structured_outputs
