"""One Transformer decoder block: causal self-attention, cross-attention over the encoder output, feed-forward.

Pre-/post-norm as in encoder_layer.py. For incremental decoding pass `cache` (from `init_cache`, plus the
cross-attention keys/values from `project_memory`) and `decode_index`; the layer then returns (output, new_cache).
The encoder output is assumed to have the decoder's width (true for models.transformer.Transformer).
"""
from __future__ import annotations


import tensorflow as tf

from moatkit.models.layers.attention import MultiHeadAttention
from moatkit.models.layers.encoder_layer import TransformerBlock, residual_block


class DecoderLayer(TransformerBlock):
    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        attention = dict(num_heads=self.num_heads, key_dim=self.head_size(input_shape), dropout=self.attention_dropout,
                         kernel_initializer=self.kernel_initializer)
        self.self_attention = MultiHeadAttention(name="self_attention", **attention)
        self.self_attention_norm = self.norm("self_attention_norm")
        self.cross_attention = MultiHeadAttention(name="cross_attention", **attention)
        self.cross_attention_norm = self.norm("cross_attention_norm")
        self.feed_forward = self.feed_forward_layer()
        self.feed_forward_norm = self.norm("feed_forward_norm")
        self.dropout = tf.keras.layers.Dropout(self.dropout_rate)
        for layer in (self.self_attention, self.self_attention_norm, self.cross_attention, self.cross_attention_norm,
                      self.feed_forward, self.feed_forward_norm):
            with tf.name_scope(layer.name):
                layer.build(input_shape)
        super().build(input_shape)

    def init_cache(self, memory, batch_size, steps) -> dict:
        """Self-attention cache for `steps` positions plus the cross-attention keys/values of `memory`."""
        return {"self": self.self_attention.init_cache(batch_size, steps),
                "cross": self.cross_attention.project_memory(memory)}

    def call(self, inputs, memory=None, *, memory_mask=None, cache=None, decode_index=None, training=None):
        """inputs (B, Q, M) target; memory (B, K, M) encoder output; memory_mask (B, K), 1 = real token.

        Training / full decoding: causal self-attention over inputs. Incremental: Q = 1, `cache` and
        `decode_index` given → returns (output (B, 1, M), new_cache).
        """
        x = inputs
        cross_mask = None if memory_mask is None else tf.cast(memory_mask, tf.bool)[:, None, :]  # (B, 1, K)
        y = self.self_attention_norm(x) if self.norm_first else x
        if cache is not None:
            y, self_cache = self.self_attention(y, y, cache=cache["self"], decode_index=decode_index, training=training)
        else:
            y = self.self_attention(y, y, use_causal_mask=True, training=training)
        x = residual_block(x, y, norm=self.self_attention_norm, norm_first=self.norm_first, dropout=self.dropout,
                           training=training)
        y = self.cross_attention_norm(x) if self.norm_first else x
        if cache is not None:
            y = self.cross_attention(y, cache=cache["cross"], attention_mask=cross_mask, training=training)
        else:
            y = self.cross_attention(y, memory, attention_mask=cross_mask, training=training)
        x = residual_block(x, y, norm=self.cross_attention_norm, norm_first=self.norm_first, dropout=self.dropout,
                           training=training)
        y = self.feed_forward_norm(x) if self.norm_first else x
        y = self.feed_forward(tf.cast(y, self.compute_dtype), training=training)
        x = residual_block(x, y, norm=self.feed_forward_norm, norm_first=self.norm_first, dropout=self.dropout,
                           training=training)
        if cache is not None:
            return x, {"self": self_cache, "cross": cache["cross"]}
        return x

    def get_prunable_weights(self):
        return (self.self_attention.get_prunable_weights() + self.cross_attention.get_prunable_weights()
                + self.feed_forward.get_prunable_weights())
