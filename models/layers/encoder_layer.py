"""One Transformer encoder block: self-attention and feed-forward, each with dropout, residual and LayerNorm.

Post-norm (`norm_first=False`, the original Transformer and BERT): x = LN(x + f(x)).
Pre-norm (`norm_first=True`, more stable for deep stacks): x = x + f(LN(x)); the stack adds a final LayerNorm.
LayerNorm runs in float32 under mixed precision.
"""
from __future__ import annotations


import tensorflow as tf
import tensorflow_model_optimization as tfmot

from moatkit.models.layers.attention import MultiHeadAttention
from moatkit.models.layers.feed_forward import FeedForward


def residual_block(x, sublayer_output, *, norm, norm_first: bool, dropout, training):
    """Adds a sublayer's output back onto the residual stream `x` (post-norm also normalises the sum)."""
    out = dropout(sublayer_output, training=training)
    if norm_first:
        return x + tf.cast(out, x.dtype)
    return norm(tf.cast(x, tf.float32) + tf.cast(out, tf.float32))


class TransformerBlock(tf.keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
    """The constructor arguments, width check, LayerNorm factory and config shared by the encoder and decoder blocks."""

    def __init__(self, *, num_heads: int, intermediate_dim: int, dropout: float = 0.1,
                 attention_dropout: float | None = None, activation: str = "relu", norm_first: bool = False,
                 layer_norm_epsilon: float = 1e-6, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout_rate = dropout
        self.attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.activation = activation
        self.norm_first = norm_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)

    def head_size(self, input_shape) -> int:
        width = int(tf.TensorShape(input_shape)[-1])
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads={self.num_heads}")
        return width // self.num_heads

    def norm(self, name: str) -> tf.keras.layers.LayerNormalization:
        return tf.keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype="float32", name=name)

    def feed_forward_layer(self) -> FeedForward:
        return FeedForward(intermediate_dim=self.intermediate_dim, activation=self.activation,
                           dropout=self.dropout_rate, kernel_initializer=self.kernel_initializer, name="feed_forward")



class EncoderLayer(TransformerBlock):
    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        self.attention = MultiHeadAttention(num_heads=self.num_heads, key_dim=self.head_size(input_shape),
                                            dropout=self.attention_dropout, kernel_initializer=self.kernel_initializer,
                                            name="self_attention")
        self.attention_norm = self.norm("self_attention_norm")
        self.feed_forward = self.feed_forward_layer()
        self.feed_forward_norm = self.norm("feed_forward_norm")
        self.dropout = tf.keras.layers.Dropout(self.dropout_rate)
        for layer in (self.attention, self.attention_norm, self.feed_forward, self.feed_forward_norm):
            with tf.name_scope(layer.name):
                layer.build(input_shape)
        super().build(input_shape)

    def call(self, inputs, *, attention_mask=None, training=None):
        """inputs (B, L, M); attention_mask (B, L) padding or (B, L, L), 1 = attend → (B, L, M)."""
        x = inputs
        if attention_mask is not None and attention_mask.shape.rank == 2:
            attention_mask = attention_mask[:, None, :]  # (B, 1, L)
        y = self.attention_norm(x) if self.norm_first else x
        y = self.attention(y, y, attention_mask=attention_mask, training=training)
        x = residual_block(x, y, norm=self.attention_norm, norm_first=self.norm_first, dropout=self.dropout,
                           training=training)
        y = self.feed_forward_norm(x) if self.norm_first else x
        y = self.feed_forward(tf.cast(y, self.compute_dtype), training=training)
        return residual_block(x, y, norm=self.feed_forward_norm, norm_first=self.norm_first, dropout=self.dropout,
                              training=training)

    def get_prunable_weights(self):
        return self.attention.get_prunable_weights() + self.feed_forward.get_prunable_weights()
