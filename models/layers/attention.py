"""Scaled dot-product and multi-head attention with padding/causal masks and an optional key/value cache.

Shapes: B batch, Q query length, K key length, H heads, D head size, M model width.
Masks hold 1/True where attention is allowed and broadcast to (B, Q, K) — a padding mask is (B, 1, K), a
causal mask (1, Q, K). Scores are computed in the compute dtype, then masked and softmaxed in float32.
"""
from __future__ import annotations


import tensorflow as tf
import tensorflow_model_optimization as tfmot

# float16's lowest finite value: a masked score stays finite even if a caller keeps scores in half precision
# (-1e9 would become -inf there and turn a fully masked row into NaN).
MASK_VALUE = -65504.0


def clone_initializer(initializer):
    """A fresh instance: an unseeded Keras initializer instance returns the same values on every call."""
    return initializer.__class__.from_config(initializer.get_config())


def causal_mask(query_length, key_length=None, *, offset=0) -> tf.Tensor:
    """(1, Q, K) bool: query i (at absolute position offset + i) sees keys 0..offset + i."""
    key_length = query_length if key_length is None else key_length
    rows = tf.range(query_length)[:, None] + offset  # (Q, 1)
    cols = tf.range(key_length)[None, :]  # (1, K)
    return (cols <= rows)[None]


def scaled_dot_product_attention(query, key, value, *, mask=None, dropout=None, training=None):
    """query (B, Q, H, D), key/value (B, K, H, D), mask broadcastable to (B, H, Q, K)
    → output (B, Q, H, D), float32 weights (B, H, Q, K). Einsums keep the heads axis in place (no transposes)."""
    query = query * tf.cast(tf.math.rsqrt(tf.cast(tf.shape(query)[-1], tf.float32)), query.dtype)
    scores = tf.cast(tf.einsum("bqhd,bkhd->bhqk", query, key), tf.float32)  # (B, H, Q, K)
    if mask is not None:
        scores = tf.where(tf.cast(mask, tf.bool), scores, MASK_VALUE)
    weights = tf.nn.softmax(scores, axis=-1)  # float32 under any precision policy
    if dropout is not None:
        weights = dropout(weights, training=training)
    return tf.einsum("bhqk,bkhd->bqhd", tf.cast(weights, value.dtype), value), weights


class MultiHeadAttention(tf.keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
    """Multi-head attention (Vaswani et al. 2017) whose projections are plain Dense layers ((M, H*D) kernels).

    `call(query, value, key=None, *, attention_mask=None, use_causal_mask=False, cache=None, decode_index=None)`:
    - self-attention: `value=query`; cross-attention: `value=memory`.
    - incremental decoding: `cache={"key", "value"}` of shape (B, T, H, D) preallocated for T steps and
      `decode_index` the position of the single query token; its key/value are written at that index and the
      query attends to positions ≤ decode_index. Returns (output, new_cache).
    - precomputed cross-attention: `cache` from `project_memory(memory)` and no `decode_index`; returns output.
    """

    dense_class = tf.keras.layers.Dense  # of the projections; models.compress.qat swaps in a TFLite-friendlier one

    def __init__(self, *, num_heads: int, key_dim: int, value_dim: int | None = None, output_dim: int | None = None,
                 dropout: float = 0.0, use_bias: bool = True, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim or key_dim
        self.output_dim = output_dim
        self.dropout_rate = dropout
        self.use_bias = use_bias
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.query_dense = self.dense_class(num_heads * key_dim, name="query", **self._dense_args())
        self.key_dense = self.dense_class(num_heads * key_dim, name="key", **self._dense_args())
        self.value_dense = self.dense_class(num_heads * self.value_dim, name="value", **self._dense_args())
        self.output_dense = None  # needs the query width unless output_dim is given; created in build
        self.dropout = tf.keras.layers.Dropout(dropout, dtype="float32")  # on the float32 attention weights

    def _dense_args(self) -> dict:
        return dict(use_bias=self.use_bias, kernel_initializer=clone_initializer(self.kernel_initializer))

    def build(self, query_shape, value_shape=None, key_shape=None):
        query_shape = tf.TensorShape(query_shape)
        value_shape = tf.TensorShape(value_shape) if value_shape is not None else query_shape
        key_shape = tf.TensorShape(key_shape) if key_shape is not None else value_shape
        width = self.output_dim or query_shape[-1]
        self.output_dense = self.dense_class(width, name="attention_output", **self._dense_args())
        with tf.name_scope(self.query_dense.name):
            self.query_dense.build(query_shape)
        with tf.name_scope(self.key_dense.name):
            self.key_dense.build(key_shape)
        with tf.name_scope(self.value_dense.name):
            self.value_dense.build(value_shape)
        with tf.name_scope(self.output_dense.name):
            self.output_dense.build(query_shape[:-1].concatenate([self.num_heads * self.value_dim]))
        super().build(query_shape)

    def _split_heads(self, x, depth):
        """(B, L, H*D) → (B, L, H, D)."""
        shape = tf.shape(x)
        return tf.reshape(x, [shape[0], shape[1], self.num_heads, depth])

    def _combine_heads(self, x):
        """(B, Q, H, D) → (B, Q, H*D), the output projection's input (QAT subclasses quantize it here)."""
        shape = tf.shape(x)
        return tf.reshape(x, [shape[0], shape[1], self.num_heads * self.value_dim])

    def project_memory(self, memory) -> dict:
        """Cross-attention keys/values of an encoder output (B, K, M), computed once for all decoding steps."""
        memory = tf.cast(memory, self.compute_dtype)
        if not self.built:
            self.build(memory.shape)
        return {"key": self._split_heads(self.key_dense(memory), self.key_dim),  # (B, K, H, D)
                "value": self._split_heads(self.value_dense(memory), self.value_dim)}

    def call(self, query, value=None, key=None, *, attention_mask=None, use_causal_mask=False, cache=None,
             decode_index=None, training=None, return_attention_scores=False):
        query = tf.cast(query, self.compute_dtype)  # Keras only autocasts the first argument
        q = self._split_heads(self.query_dense(query), self.key_dim)  # (B, Q, H, D)
        if cache is not None and decode_index is None:  # precomputed memory (cross-attention)
            k, v = cache["key"], cache["value"]  # (B, K, H, D)
        else:
            value = query if value is None else tf.cast(value, self.compute_dtype)
            key = value if key is None else tf.cast(key, self.compute_dtype)
            k = self._split_heads(self.key_dense(key), self.key_dim)  # (B, L, H, D)
            v = self._split_heads(self.value_dense(value), self.value_dim)
            if cache is not None:  # write this step's key/value at decode_index of the preallocated cache
                steps = tf.shape(cache["key"])[1]
                at = (tf.range(steps) == decode_index)[None, :, None, None]  # (1, T, 1, 1)
                k = tf.where(at, tf.cast(k, cache["key"].dtype), cache["key"])  # (B, T, H, D)
                v = tf.where(at, tf.cast(v, cache["value"].dtype), cache["value"])
                cache = {"key": k, "value": v}
                visible = (tf.range(steps) <= decode_index)[None, None, :]  # (1, 1, T)
                attention_mask = visible if attention_mask is None else tf.logical_and(
                    tf.cast(attention_mask, tf.bool), visible)
        mask = None if attention_mask is None else tf.cast(attention_mask, tf.bool)
        if use_causal_mask and decode_index is None:
            causal = causal_mask(tf.shape(q)[1], tf.shape(k)[1])
            mask = causal if mask is None else tf.logical_and(mask, causal)
        if mask is not None:
            mask = mask[:, None]  # (B, 1, Q, K): the same mask for every head
        output, weights = scaled_dot_product_attention(q, k, v, mask=mask, dropout=self.dropout,
                                                       training=training)  # (B, Q, H, D)
        output = self.output_dense(self._combine_heads(output))
        updated = decode_index is not None and cache is not None  # a self-attention step returns its new cache
        if return_attention_scores:
            return (output, weights, cache) if updated else (output, weights)
        return (output, cache) if updated else output

    def init_cache(self, batch_size, steps, dtype=None) -> dict:
        """Zeros for `steps` self-attention positions: {"key", "value"} of shape (B, T, H, D)."""
        dtype = dtype or self.compute_dtype
        return {"key": tf.zeros([batch_size, steps, self.num_heads, self.key_dim], dtype),
                "value": tf.zeros([batch_size, steps, self.num_heads, self.value_dim], dtype)}

    def get_prunable_weights(self):
        return [d.kernel for d in (self.query_dense, self.key_dense, self.value_dense, self.output_dense)]

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "value_dim": self.value_dim, "output_dim": self.output_dim, "dropout": self.dropout_rate,
                "use_bias": self.use_bias,
                "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer)}
