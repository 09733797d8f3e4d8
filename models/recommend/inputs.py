"""Training and inference arrays for the sequential recommender (index layout in model.py)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def left_pad(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """The last `length` items of each sequence, right-aligned in a (U, length) int32 array (0 = padding)."""
    out = np.zeros((len(sequences), length), dtype=np.int32)
    for row, seq in enumerate(sequences):
        tail = seq[-length:]
        if len(tail):
            out[row, length - len(tail):] = tail
    return out


def windows(sequences: list[np.ndarray], length: int) -> list[np.ndarray]:
    """Each sequence cut from its end into pieces of at most `length` + 1 items (neighbours share one item, so
    every transition is a training target once): long histories train in full, not only their last items."""
    pieces = []
    for seq in sequences:
        end = len(seq)
        while end > 1:
            pieces.append(seq[max(0, end - length - 1):end])
            end -= length
    return pieces


def causal_examples(train: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """SASRec: inputs = items[:-1], targets = items[1:], both left-padded to `length` → (X, Y), 0 = no target."""
    pieces = windows(train, length)
    return left_pad([p[:-1] for p in pieces], length), left_pad([p[1:] for p in pieces], length)


def masked_dataset(train: list[np.ndarray], length: int, *, mask_id: int, probability: float, batch_size: int,
                   seed: int) -> tf.data.Dataset:
    """BERT4Rec: each epoch masks a fresh random `probability` share of every window's items (at least one, and the
    last item in one window of ten, which is what inference asks for) → (inputs, targets, weights) batches."""
    items = left_pad([p[1:] if len(p) > length else p for p in windows(train, length)], length)  # (W, L)

    last = tf.one_hot(length - 1, length, on_value=True, off_value=False)  # (L,)

    def mask(x):
        real = x > 0
        draw = tf.random.uniform(tf.shape(x), seed=seed)
        chosen = tf.logical_and(real, draw < probability)
        last_only = tf.random.uniform([], seed=seed + 1) < 0.1
        chosen = tf.where(last_only, last, chosen)
        chosen = tf.where(tf.reduce_any(chosen), chosen, last)
        inputs = tf.where(chosen, tf.cast(mask_id, x.dtype), x)
        targets = tf.where(chosen, x, tf.zeros_like(x))
        return inputs, targets, tf.cast(chosen, tf.float32)

    # repeated, not re-iterated per epoch: a fresh iterator would replay the same seeded masks every epoch
    return (tf.data.Dataset.from_tensor_slices(items).shuffle(len(items), seed=seed, reshuffle_each_iteration=True)
            .repeat().map(mask, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE))


def causal_dataset(train: list[np.ndarray], length: int, *, batch_size: int, seed: int) -> tf.data.Dataset:
    x, y = causal_examples(train, length)
    w = (y > 0).astype(np.float32)
    return (tf.data.Dataset.from_tensor_slices((x, y, w)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .repeat().batch(batch_size).prefetch(tf.data.AUTOTUNE))


def inference_inputs(histories: list[np.ndarray], length: int, *, mask_id: int | None) -> np.ndarray:
    """The model's input for predicting each history's next item: the newest `length` items (bert4rec: the newest
    `length` − 1 and the mask item)."""
    if mask_id is None:
        return left_pad(histories, length)
    return left_pad([np.append(h[-(length - 1):] if length > 1 else h[:0], mask_id) for h in histories], length)
