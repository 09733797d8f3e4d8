"""The sequential recommender: moatkit's Transformer encoder over item ids, scored against its own item embeddings.

Index layout: 0 padding, 1..N items, N + 1 the mask item (BERT4Rec-style models only). `causal=True` is SASRec
(Kang & McAuley 2018: position t predicts item t + 1 and sees items ≤ t); `causal=False` is BERT4Rec (Sun et al.
2019: masked positions are predicted from both sides; at inference the mask item is appended to the history).
The output layer is the item embedding table (tied) plus a per-item bias, over the full catalogue: no sampled
negatives (Petrov & Macdonald 2023 show sampled losses cost SASRec much of its accuracy).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ModelError

from moatkit.models.layers.attention import MASK_VALUE
from moatkit.models.transformer import Encoder

MODEL_FILE, WEIGHTS_FILE = "recommender.json", "weights.h5"


class SequentialRecommender(tf.keras.Model):
    """item_ids (B, L) int32, left-padded with 0 → logits (B, L, N + 1) float32 over padding + items."""

    def __init__(self, *, num_items: int, max_length: int, dim: int = 64, num_layers: int = 2, num_heads: int = 2,
                 intermediate_dim: int = 256, dropout: float = 0.2, causal: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.settings = dict(num_items=num_items, max_length=max_length, dim=dim, num_layers=num_layers,
                             num_heads=num_heads, intermediate_dim=intermediate_dim, dropout=dropout, causal=causal)
        self.num_items, self.max_length, self.causal = num_items, max_length, causal
        self.mask_id = num_items + 1
        self.encoder = Encoder(vocab_size=num_items + 2, dim=dim, num_layers=num_layers, num_heads=num_heads,
                               intermediate_dim=intermediate_dim, max_length=max_length, position="learned",
                               dropout=dropout, activation="gelu", norm_first=True, initializer_range=0.02,
                               causal=causal, name="encoder")
        self.item_bias = self.add_weight(name="item_bias", shape=(num_items + 1,), initializer="zeros",
                                         dtype="float32", experimental_autocast=False)  # float32 logits
        # the padding slot can never be recommended
        self.not_an_item = tf.constant([MASK_VALUE] + [0.0] * num_items, dtype=tf.float32)  # (N + 1,)

    def score(self, hidden):
        """hidden (..., M) → logits (..., N + 1) float32 against the tied item embeddings (the mask row left out)."""
        table = tf.cast(self.encoder.embedding.embeddings[: self.num_items + 1], tf.float32)  # (N + 1, M)
        return tf.matmul(tf.cast(hidden, tf.float32), table, transpose_b=True) + self.item_bias + self.not_an_item

    def call(self, item_ids, training=None):
        return self.score(self.encoder(item_ids, training=training))  # (B, L, N + 1)

    def next_item_logits(self, item_ids):
        """item_ids (B, L) left-padded, the newest item last (bert4rec: the mask item last) → (B, N + 1)."""
        return self.score(self.encoder(item_ids, training=False)[:, -1])

    def get_config(self):
        return {**self.settings, "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


# === Saved model dir (what export reads) ===

def save_model(directory: Path, model: SequentialRecommender, data, split) -> Path:
    """Weights + what export needs: the settings, the raw item ids and titles per index, and popularity counts over
    every interaction (the empty-history fallback of the served model)."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(directory / WEIGHTS_FILE))
    popularity = np.bincount(np.concatenate(data.sequences), minlength=data.num_items + 1)
    (directory / MODEL_FILE).write_text(json.dumps({
        "settings": model.get_config() | {"name": None}, "items": data.items, "titles": data.titles,
        "popularity": popularity.tolist(), "users": len(split.users)}))
    return directory


def load_model(directory: str | Path) -> tuple[SequentialRecommender, dict]:
    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file():
        raise ModelError(f"'{directory}' is not a recommender model dir (no {MODEL_FILE})",
                         fix="pass the `model` dir inside a `moat recommend train` run dir")
    meta = json.loads((directory / MODEL_FILE).read_text())
    settings = {k: v for k, v in meta["settings"].items() if k != "name"}
    model = SequentialRecommender(**settings)
    model(tf.zeros((1, settings["max_length"]), tf.int32))
    model.load_weights(str(directory / WEIGHTS_FILE))
    return model, meta
