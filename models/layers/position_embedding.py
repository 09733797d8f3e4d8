"""Positional embeddings: fixed sinusoids (Vaswani et al. 2017) or a learned table (BERT).

Both take the token embeddings (B, L, M) and return position embeddings (1, L, M) in the compute dtype, starting
at `start_index` (the absolute position of the first token: > 0 while decoding one token at a time).
"""
from __future__ import annotations


import numpy as np
import tensorflow as tf


class SinusoidalPositionEmbedding(tf.keras.layers.Layer):
    def __init__(self, *, max_length: int, min_timescale: float = 1.0, max_timescale: float = 1.0e4, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.min_timescale = min_timescale
        self.max_timescale = max_timescale

    def build(self, input_shape):
        width = int(input_shape[-1])
        if width % 2:
            raise ValueError(f"sinusoidal positions need an even width, got {width}")
        # sin on the first half of the channels, cos on the second (the tensor2tensor layout)
        half = width // 2
        log_step = np.log(self.max_timescale / self.min_timescale) / max(half - 1, 1)
        inverse = self.min_timescale * np.exp(-log_step * np.arange(half))  # (M/2,)
        angles = np.arange(self.max_length)[:, None] * inverse[None, :]  # (max_length, M/2)
        self.table = tf.constant(np.concatenate([np.sin(angles), np.cos(angles)], axis=-1), tf.float32)
        super().build(input_shape)

    def call(self, inputs, *, start_index=0):
        length = tf.shape(inputs)[1]
        return tf.cast(self.table[None, start_index:start_index + length], self.compute_dtype)  # (1, L, M)

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length, "min_timescale": self.min_timescale,
                "max_timescale": self.max_timescale}


class LearnedPositionEmbedding(tf.keras.layers.Layer):
    def __init__(self, *, max_length: int, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.initializer = tf.keras.initializers.get(initializer)

    def build(self, input_shape):
        self.embeddings = self.add_weight("embeddings", shape=[self.max_length, int(input_shape[-1])],
                                          initializer=self.initializer)  # (max_length, M)
        super().build(input_shape)

    def call(self, inputs, *, start_index=0):
        length = tf.shape(inputs)[1]
        return tf.cast(self.embeddings[None, start_index:start_index + length], self.compute_dtype)  # (1, L, M)

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length,
                "initializer": tf.keras.initializers.serialize(self.initializer)}
