"""Transformer layers: parity with tf.keras MultiHeadAttention, masks, KV cache, config round trips, mixed precision."""

import numpy as np
import pytest
import tensorflow as tf

from moatkit.models.layers import (DecoderLayer, EncoderLayer, FeedForward, LearnedPositionEmbedding,
                                   MultiHeadAttention, SinusoidalPositionEmbedding)
from moatkit.models.layers.attention import MASK_VALUE


def _copy_keras_mha(keras_mha, ours, num_heads, key_dim):
    """Keras MHA stores EinsumDense kernels (M, H, D) / (H, D, M); ours are Dense (M, H*D) / (H*D, M)."""
    for theirs, mine in ((keras_mha._query_dense, ours.query_dense), (keras_mha._key_dense, ours.key_dense),
                         (keras_mha._value_dense, ours.value_dense)):
        kernel, bias = theirs.get_weights()
        mine.set_weights([kernel.reshape(kernel.shape[0], -1), bias.reshape(-1)])
    kernel, bias = keras_mha._output_dense.get_weights()
    ours.output_dense.set_weights([kernel.reshape(num_heads * key_dim, -1), bias])


@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "padding+causal"])
def test_attention_matches_keras_mha(mask_kind):
    rng = np.random.default_rng(0)
    batch, q_len, k_len, width, heads = 3, 7, 9, 32, 4
    query = tf.constant(rng.normal(size=(batch, q_len, width)), tf.float32)
    value = tf.constant(rng.normal(size=(batch, k_len, width)), tf.float32)
    if "causal" in mask_kind:
        value = query  # causal masks are for self-attention
    keys = value.shape[1]
    lengths = np.array([keys, keys - 3, 2])
    padding = (np.arange(keys)[None, :] < lengths[:, None])  # (B, K)
    attention_mask = tf.constant(np.repeat(padding[:, None, :], q_len, axis=1)) if "padding" in mask_kind else None
    keras_mha = tf.keras.layers.MultiHeadAttention(num_heads=heads, key_dim=width // heads)
    ours = MultiHeadAttention(num_heads=heads, key_dim=width // heads)
    causal = "causal" in mask_kind
    expected, expected_scores = keras_mha(query, value, attention_mask=attention_mask, use_causal_mask=causal,
                                          return_attention_scores=True)
    ours(query, value)
    _copy_keras_mha(keras_mha, ours, heads, width // heads)
    got, scores = ours(query, value, attention_mask=attention_mask, use_causal_mask=causal,
                       return_attention_scores=True)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), expected_scores.numpy(), atol=1e-5)
    if "padding" in mask_kind:  # padded keys get exactly zero weight
        assert float(tf.reduce_max(scores[2, :, :, 2:])) == 0.0


def test_mask_value_is_finite_in_float16():
    assert np.isfinite(np.float16(MASK_VALUE))
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    x = tf.random.normal([1, 3, 8])
    out = layer(x, x, attention_mask=tf.zeros([1, 3, 3], tf.bool))  # fully masked rows stay finite (uniform weights)
    assert np.isfinite(out.numpy()).all()


def test_kv_cache_matches_full_causal_attention():
    layer = MultiHeadAttention(num_heads=2, key_dim=8)
    x = tf.random.normal([2, 6, 16], seed=1)
    full = layer(x, x, use_causal_mask=True)
    cache = layer.init_cache(2, 6)
    steps = []
    for i in range(6):
        out, cache = layer(x[:, i:i + 1], x[:, i:i + 1], cache=cache, decode_index=i)
        steps.append(out)
    np.testing.assert_allclose(tf.concat(steps, axis=1).numpy(), full.numpy(), atol=1e-5)


def test_positions():
    x = tf.zeros([2, 10, 16])
    sinusoid = SinusoidalPositionEmbedding(max_length=50)
    table = sinusoid(x)
    assert table.shape == (1, 10, 16)
    np.testing.assert_allclose(table[0, 0].numpy(), [0.0] * 8 + [1.0] * 8, atol=1e-7)  # sin(0), cos(0)
    np.testing.assert_allclose(sinusoid(x[:, :1], start_index=7)[0, 0].numpy(), table[0, 7].numpy())
    learned = LearnedPositionEmbedding(max_length=50)
    assert learned(x).shape == (1, 10, 16) and len(learned.trainable_weights) == 1


LAYERS = [
    lambda: MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.1, name="mha"),
    lambda: FeedForward(intermediate_dim=12, activation="gelu", dropout=0.1),
    lambda: EncoderLayer(num_heads=2, intermediate_dim=12, norm_first=True),
    lambda: EncoderLayer(num_heads=2, intermediate_dim=12, activation="gelu", layer_norm_epsilon=1e-12),
    lambda: DecoderLayer(num_heads=2, intermediate_dim=12, norm_first=True),
    lambda: SinusoidalPositionEmbedding(max_length=20),
    lambda: LearnedPositionEmbedding(max_length=20),
]


def _run(layer, x):
    if isinstance(layer, DecoderLayer):
        return layer(x, x[:, :3], memory_mask=tf.constant([[1, 1, 0]] * 2))
    if isinstance(layer, MultiHeadAttention):
        return layer(x, x)
    return layer(x)


@pytest.mark.parametrize("make", LAYERS)
def test_get_config_round_trip(make):
    layer = make()
    x = tf.random.normal([2, 5, 8], seed=2)
    out = _run(layer, x)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    _run(clone, x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_run(clone, x).numpy(), out.numpy(), atol=1e-6)


@pytest.mark.parametrize("make", LAYERS)
def test_layers_run_under_mixed_float16(make):
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = make()
        out = _run(layer, tf.random.normal([2, 5, 8], seed=3))
        assert np.isfinite(out.numpy()).all()
        assert all(w.dtype == tf.float32 for w in layer.weights)  # variables stay float32
        if isinstance(layer, (EncoderLayer, DecoderLayer)):
            assert layer.feed_forward.compute_dtype == "float16"
            assert layer.feed_forward_norm.compute_dtype == "float32"  # LayerNorm in float32
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_attention_softmax_is_float32_under_mixed_precision():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = MultiHeadAttention(num_heads=2, key_dim=4)
        x = tf.random.normal([1, 3, 8])
        out, scores = layer(x, x, return_attention_scores=True)
        assert out.dtype == tf.float16 and scores.dtype == tf.float32
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
