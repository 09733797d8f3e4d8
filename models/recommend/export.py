"""Export a trained recommender into a TF Serving model repository `<repo>/<model>/<version>/`.

Signatures (predict):
- `serving_default`: `history` (batch, length) of raw item ids, oldest first → the top `top_k` items:
  `item_ids` (batch, k), `titles` (batch, k) string, `scores` (batch, k) float32 logits, `unknown_items` (batch,)
  int32 (how many ids of the row the model does not know).
- `top_k`: the same plus `k` (scalar int32).
Ids are int64 when every catalogue id is an integer (MovieLens), strings otherwise. The policy for what clients
send, applied in the graph: rows are padded with 0 ("" for string ids) anywhere; ids the model does not know are
ignored (and counted in `unknown_items`); only the newest `max_length` known items are read (older ones are
truncated), but every known item of the row is excluded from the result; a row with no known item gets the most
popular items; k outside 1..catalogue size is an INVALID_ARGUMENT error.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ModelError
from moatkit.models.export import save_signatures, write_version, write_warmup
from moatkit.models.layers.attention import MASK_VALUE
from moatkit.models.recommend.model import load_model

RECOMMENDER_FILE = "assets.extra/moat_recommender.json"


def integer_ids(items: list[str]) -> bool:
    return all(i.lstrip("-").isdigit() for i in items[1:])


class RecommenderModule(tf.Module):
    def __init__(self, model, meta: dict, *, top_k: int):
        super().__init__()
        self.model = model
        items, self.num_items = meta["items"], len(meta["items"]) - 1
        self.default_k = min(top_k, self.num_items)
        self.id_dtype = tf.int64 if integer_ids(items) else tf.string
        raw = np.array([int(i) for i in items[1:]], np.int64) if self.id_dtype == tf.int64 else np.array(items[1:])
        self.padding = tf.constant(0 if self.id_dtype == tf.int64 else "", self.id_dtype)
        self.index = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(raw), tf.range(1, self.num_items + 1, dtype=tf.int32)),
            default_value=-1)
        self.item_ids = tf.constant(np.concatenate([[0 if self.id_dtype == tf.int64 else ""], raw]))  # by index
        self.titles = tf.constant(meta["titles"])
        self.popularity = tf.constant(np.log1p(np.array(meta["popularity"], np.float32)))  # (N + 1,)
        self.mask_id = None if model.causal else model.mask_id

    def recommend(self, history, k):
        tf.debugging.assert_greater_equal(k, 1, message="k must be at least 1")
        tf.debugging.assert_less_equal(k, self.num_items,
                                       message=f"k must not exceed the catalogue size ({self.num_items} items)")
        index = self.index.lookup(history)  # (B, H): 1..N, -1 unknown
        sent = tf.not_equal(history, self.padding)
        unknown = tf.reduce_sum(tf.cast(tf.logical_and(sent, index < 0), tf.int32), axis=1)  # (B,)
        items = tf.ragged.boolean_mask(index, index > 0)  # (B, None) known items in the client's order
        lengths = tf.cast(items.row_lengths(), tf.int32)  # (B,)
        scores = tf.cast(self.model.next_item_logits(self._model_inputs(items, lengths)), tf.float32)  # (B, N + 1)
        scores = tf.where(lengths[:, None] > 0, scores, self.popularity[None, :])  # cold start: most popular
        batch = tf.shape(history)[0]
        seen = tf.scatter_nd(tf.stack([items.value_rowids(), tf.cast(items.flat_values, tf.int64)], axis=1),
                             tf.ones_like(items.flat_values, tf.float32), [tf.cast(batch, tf.int64), self.num_items + 1])
        padding_slot = tf.one_hot(0, self.num_items + 1, dtype=tf.float32)[None, :]
        scores = tf.where((seen + padding_slot) > 0, MASK_VALUE, scores)
        top = tf.math.top_k(scores, k=k)
        return {"item_ids": tf.gather(self.item_ids, top.indices), "titles": tf.gather(self.titles, top.indices),
                "scores": top.values, "unknown_items": unknown}

    def _model_inputs(self, items, lengths):
        """The newest max_length known items (bert4rec: max_length − 1 and the mask item), left-padded."""
        length = self.model.max_length - (0 if self.mask_id is None else 1)
        dense = items.to_tensor(default_value=0)  # (B, H) right-padded
        newest_first = tf.reverse_sequence(dense, tf.cast(lengths, tf.int64), seq_axis=1, batch_axis=0)
        pad = tf.maximum(length - tf.shape(newest_first)[1], 0)
        newest_first = tf.pad(newest_first, [[0, 0], [0, pad]])[:, :length]  # (B, length), newest item first
        oldest_first = tf.reverse(newest_first, axis=[1])  # left-padded, newest item last
        if self.mask_id is not None:
            mask = tf.fill([tf.shape(oldest_first)[0], 1], tf.constant(self.mask_id, tf.int32))
            oldest_first = tf.concat([oldest_first, mask], axis=1)
        return oldest_first

    def signatures(self) -> dict:
        history = tf.TensorSpec([None, None], self.id_dtype, name="history")
        return {"serving_default": tf.function(lambda history: self.recommend(history, self.default_k),
                                               input_signature=[history]),
                "top_k": tf.function(self.recommend,
                                     input_signature=[history, tf.TensorSpec([], tf.int32, name="k")])}


def export_recommender(model_dir: str | Path, *, repo: str | Path, model_name: str = "recommender", top_k: int = 10,
                       version: int | None = None) -> dict:
    """Writes the next version (or `version`) of `model_name` under `repo`; returns where and what."""
    model, meta = load_model(model_dir)
    module = RecommenderModule(model, meta, top_k=top_k)
    signatures = module.signatures()
    example = _warmup_history(meta, module.id_dtype)

    def write(staging: Path) -> None:
        save_signatures(module, staging, signatures)
        (staging / RECOMMENDER_FILE).parent.mkdir(parents=True, exist_ok=True)
        (staging / RECOMMENDER_FILE).write_text(json.dumps({
            "model_dir": str(Path(model_dir).resolve()), "num_items": module.num_items, "top_k": module.default_k,
            "max_length": model.max_length, "causal": model.causal,
            "id_dtype": "int64" if module.id_dtype == tf.int64 else "string"}))
        write_warmup(staging, model_name, inputs={"history": example})

    if not meta["items"][1:]:
        raise ModelError(f"'{model_dir}' has an empty catalogue", fix="train on a log with at least one item")
    path, version, size = write_version(Path(repo) / model_name, version, write)
    return {"path": str(path), "version": version, "bytes": size, "model_name": model_name, "top_k": module.default_k}


def _warmup_history(meta: dict, dtype) -> np.ndarray:
    ids = meta["items"][1:4]
    return np.array([[int(i) for i in ids]], np.int64) if dtype == tf.int64 else np.array([ids], dtype=object)
