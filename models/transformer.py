"""Encoder, Decoder and the seq2seq Transformer (Vaswani et al. 2017) built from models/layers.

The Encoder also covers BERT: learned positions, token-type embeddings, an embedding LayerNorm, post-norm GELU
blocks (`encoder_kwargs_from_bert_config` + `load_bert_weights` map an HF BERT checkpoint onto it).
Shapes: B batch, S source length, T target length, M width, V vocabulary.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import tensorflow as tf

from moatkit.data.core.errors import ConfigError
from moatkit.models.layers.attention import causal_mask, clone_initializer
from moatkit.models.layers import DecoderLayer, EncoderLayer, LearnedPositionEmbedding, SinusoidalPositionEmbedding


@dataclasses.dataclass
class TransformerConfig:
    source_vocab_size: int = 8000
    target_vocab_size: int = 8000
    dim: int = 256
    encoder_layers: int = 3
    decoder_layers: int = 3
    num_heads: int = 4
    intermediate_dim: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    max_length: int = 256  # longest source or target sequence (positions)
    position: Literal["sinusoidal", "learned"] = "sinusoidal"
    activation: str = "relu"
    norm_first: bool = False
    layer_norm_epsilon: float = 1e-6
    tie_embeddings: bool = True  # decoder input embedding = output projection (Press & Wolf 2017)
    pad_id: int = 0

    def validate(self):
        if self.dim % self.num_heads:
            raise ConfigError(f"config key 'dim' ({self.dim}) must be divisible by 'num_heads' ({self.num_heads})",
                              fix="e.g. --set dim=256 --set num_heads=4")
        if self.position == "sinusoidal" and self.dim % 2:
            raise ConfigError(f"config key 'dim' ({self.dim}) must be even for sinusoidal positions",
                              fix="use an even dim or --set position=learned")
        if not 0 <= self.dropout < 1 or not 0 <= self.attention_dropout < 1:
            raise ConfigError("config keys 'dropout'/'attention_dropout' must be in [0, 1)",
                              fix="e.g. --set dropout=0.1")


# === Layers ===

class TokenAndPositionEmbedding(tf.keras.layers.Layer):
    """Token (+ token type) + position embeddings, optionally scaled by sqrt(M) and LayerNormed (BERT)."""

    def __init__(self, *, vocab_size: int, dim: int, max_length: int, position: str = "sinusoidal",
                 type_vocab_size: int = 0, scale: bool = True, norm: bool = False, layer_norm_epsilon: float = 1e-6,
                 dropout: float = 0.0, initializer_range: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.dim, self.max_length, self.position = vocab_size, dim, max_length, position
        self.type_vocab_size, self.scale, self.norm_enabled = type_vocab_size, scale, norm
        self.layer_norm_epsilon, self.dropout_rate = layer_norm_epsilon, dropout
        self.initializer_range = initializer_range
        stddev = initializer_range if initializer_range is not None else dim ** -0.5
        init = tf.keras.initializers.RandomNormal(stddev=stddev)
        self.token = tf.keras.layers.Embedding(vocab_size, dim, embeddings_initializer=clone_initializer(init),
                                               name="token")
        self.type = (tf.keras.layers.Embedding(type_vocab_size, dim, embeddings_initializer=clone_initializer(init),
                                               name="token_type")
                     if type_vocab_size else None)
        self.positions = (LearnedPositionEmbedding(max_length=max_length, initializer=init, name="position")
                          if position == "learned"
                          else SinusoidalPositionEmbedding(max_length=max_length, name="position"))
        self.norm = (tf.keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype="float32", name="norm")
                     if norm else None)
        self.dropout = tf.keras.layers.Dropout(dropout)

    def build(self, input_shape):
        shape = tf.TensorShape(input_shape).concatenate([self.dim])
        for layer in filter(None, (self.token, self.type, self.positions, self.norm)):
            with tf.name_scope(layer.name):
                layer.build(input_shape if isinstance(layer, tf.keras.layers.Embedding) else shape)
        super().build(input_shape)

    @property
    def embeddings(self):
        return self.token.embeddings  # (V, M)

    def call(self, token_ids, *, token_type_ids=None, start_index=0, training=None):
        x = tf.cast(self.token(token_ids), self.compute_dtype)  # (B, L, M)
        if self.scale:
            x *= tf.cast(math.sqrt(self.dim), x.dtype)
        if self.type is not None:
            token_type_ids = tf.zeros_like(token_ids) if token_type_ids is None else token_type_ids
            x += tf.cast(self.type(token_type_ids), x.dtype)
        x += self.positions(x, start_index=start_index)
        if self.norm is not None:
            x = tf.cast(self.norm(x), self.compute_dtype)
        return self.dropout(x, training=training)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "dim": self.dim, "max_length": self.max_length,
                "position": self.position, "type_vocab_size": self.type_vocab_size, "scale": self.scale,
                "norm": self.norm_enabled, "layer_norm_epsilon": self.layer_norm_epsilon, "dropout": self.dropout_rate,
                "initializer_range": self.initializer_range}


class Encoder(tf.keras.layers.Layer):
    """token_ids (B, S) → (B, S, M). Padding comes from `padding_mask` (1 = token) or `token_ids != pad_id`."""

    def __init__(self, *, vocab_size: int, dim: int, num_layers: int, num_heads: int, intermediate_dim: int,
                 max_length: int = 512, position: str = "sinusoidal", type_vocab_size: int = 0,
                 scale_embeddings: bool = True, embedding_norm: bool = False, dropout: float = 0.1,
                 attention_dropout: float | None = None, activation: str = "relu", norm_first: bool = False,
                 layer_norm_epsilon: float = 1e-6, initializer_range: float | None = None, pad_id: int = 0,
                 causal: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.causal = causal  # each position sees itself and earlier ones only (SASRec-style next-item models)
        self.config = dict(vocab_size=vocab_size, dim=dim, num_layers=num_layers, num_heads=num_heads,
                           intermediate_dim=intermediate_dim, max_length=max_length, position=position,
                           type_vocab_size=type_vocab_size, scale_embeddings=scale_embeddings,
                           embedding_norm=embedding_norm, dropout=dropout, attention_dropout=attention_dropout,
                           activation=activation, norm_first=norm_first, layer_norm_epsilon=layer_norm_epsilon,
                           initializer_range=initializer_range, pad_id=pad_id, causal=causal)
        self.pad_id = pad_id
        init = ("glorot_uniform" if initializer_range is None
                else tf.keras.initializers.TruncatedNormal(stddev=initializer_range))
        self.embedding = TokenAndPositionEmbedding(
            vocab_size=vocab_size, dim=dim, max_length=max_length, position=position, type_vocab_size=type_vocab_size,
            scale=scale_embeddings, norm=embedding_norm, layer_norm_epsilon=layer_norm_epsilon, dropout=dropout,
            initializer_range=initializer_range, name="embedding")
        self.blocks = [EncoderLayer(num_heads=num_heads, intermediate_dim=intermediate_dim, dropout=dropout,
                                    attention_dropout=attention_dropout, activation=activation, norm_first=norm_first,
                                    layer_norm_epsilon=layer_norm_epsilon, kernel_initializer=init, name=f"layer_{i}")
                       for i in range(num_layers)]
        # pre-norm blocks leave the residual stream unnormalised, so the stack ends with one LayerNorm
        self.final_norm = (tf.keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype="float32",
                                                              name="final_norm") if norm_first else None)

    def call(self, token_ids, *, padding_mask=None, token_type_ids=None, training=None):
        if padding_mask is None:
            padding_mask = tf.not_equal(token_ids, self.pad_id)  # (B, S)
        if self.causal:
            length = tf.shape(token_ids)[1]
            padding_mask = tf.logical_and(tf.cast(padding_mask, tf.bool)[:, None, :], causal_mask(length))  # (B, S, S)
        x = self.embedding(token_ids, token_type_ids=token_type_ids, training=training)  # (B, S, M)
        for block in self.blocks:
            x = block(x, attention_mask=padding_mask, training=training)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def get_config(self):
        return {**super().get_config(), **self.config}


class Decoder(tf.keras.layers.Layer):
    """token_ids (B, T), memory (B, S, M) → hidden states (B, T, M); the Transformer applies the output projection."""

    def __init__(self, *, vocab_size: int, dim: int, num_layers: int, num_heads: int, intermediate_dim: int,
                 max_length: int = 512, position: str = "sinusoidal", scale_embeddings: bool = True,
                 dropout: float = 0.1, attention_dropout: float | None = None, activation: str = "relu",
                 norm_first: bool = False, layer_norm_epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.config = dict(vocab_size=vocab_size, dim=dim, num_layers=num_layers, num_heads=num_heads,
                           intermediate_dim=intermediate_dim, max_length=max_length, position=position,
                           scale_embeddings=scale_embeddings, dropout=dropout, attention_dropout=attention_dropout,
                           activation=activation, norm_first=norm_first, layer_norm_epsilon=layer_norm_epsilon)
        self.embedding = TokenAndPositionEmbedding(vocab_size=vocab_size, dim=dim, max_length=max_length,
                                                   position=position, scale=scale_embeddings, dropout=dropout,
                                                   name="embedding")
        self.blocks = [DecoderLayer(num_heads=num_heads, intermediate_dim=intermediate_dim, dropout=dropout,
                                    attention_dropout=attention_dropout, activation=activation, norm_first=norm_first,
                                    layer_norm_epsilon=layer_norm_epsilon, name=f"layer_{i}")
                       for i in range(num_layers)]
        self.final_norm = (tf.keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype="float32",
                                                              name="final_norm") if norm_first else None)

    def init_cache(self, memory, steps: int) -> list[dict]:
        """One cache per block for incremental decoding of up to `steps` tokens against `memory` (B, S, M)."""
        batch = tf.shape(memory)[0]
        return [block.init_cache(memory, batch, steps) for block in self.blocks]

    def call(self, token_ids, memory, *, memory_mask=None, cache=None, decode_index=None, training=None):
        start = 0 if decode_index is None else decode_index
        x = self.embedding(token_ids, start_index=start, training=training)  # (B, T, M)
        new_cache = []
        for i, block in enumerate(self.blocks):
            if cache is None:
                x = block(x, memory, memory_mask=memory_mask, training=training)
            else:
                x, layer_cache = block(x, memory, memory_mask=memory_mask, cache=cache[i], decode_index=decode_index,
                                       training=training)
                new_cache.append(layer_cache)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (x, new_cache) if cache is not None else x

    def get_config(self):
        return {**super().get_config(), **self.config}


# === Model ===

class Transformer(tf.keras.Model):
    """Seq2seq Transformer: `model({"source": (B, S), "target_in": (B, T)})` → float32 logits (B, T, V)."""

    def __init__(self, config: TransformerConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, TransformerConfig) else TransformerConfig(**config)
        c = self.config
        common = dict(dim=c.dim, num_heads=c.num_heads, intermediate_dim=c.intermediate_dim, max_length=c.max_length,
                      position=c.position, dropout=c.dropout, attention_dropout=c.attention_dropout,
                      activation=c.activation, norm_first=c.norm_first, layer_norm_epsilon=c.layer_norm_epsilon)
        self.encoder = Encoder(vocab_size=c.source_vocab_size, num_layers=c.encoder_layers, pad_id=c.pad_id,
                               name="encoder", **common)
        self.decoder = Decoder(vocab_size=c.target_vocab_size, num_layers=c.decoder_layers, name="decoder", **common)
        self.projection = None if c.tie_embeddings else tf.keras.layers.Dense(c.target_vocab_size, name="projection")
        self.output_bias = (self.add_weight("output_bias", shape=[c.target_vocab_size], initializer="zeros")
                            if c.tie_embeddings else None)

    def encode(self, source, *, training=None):
        """source (B, S) → memory (B, S, M), memory_mask (B, S) bool."""
        mask = tf.not_equal(source, self.config.pad_id)
        return self.encoder(source, padding_mask=mask, training=training), mask

    def logits(self, hidden):
        """hidden (B, T, M) → float32 logits (B, T, V)."""
        if self.projection is not None:
            return tf.cast(self.projection(hidden), tf.float32)
        embeddings = tf.cast(self.decoder.embedding.embeddings, self.compute_dtype)  # (V, M)
        logits = tf.matmul(tf.cast(hidden, self.compute_dtype), embeddings, transpose_b=True)
        return tf.cast(logits, tf.float32) + tf.cast(self.output_bias, tf.float32)  # autocast reads it as fp16

    def decode(self, target_in, memory, memory_mask, *, cache=None, decode_index=None, training=None):
        """Teacher-forced (cache None) or one incremental step → logits (and the new cache)."""
        out = self.decoder(target_in, memory, memory_mask=memory_mask, cache=cache, decode_index=decode_index,
                           training=training)
        if cache is None:
            return self.logits(out)
        hidden, cache = out
        return self.logits(hidden), cache

    def call(self, inputs, training=None):
        memory, mask = self.encode(inputs["source"], training=training)
        return self.decode(inputs["target_in"], memory, mask, training=training)

    def get_config(self):
        return dataclasses.asdict(self.config)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(TransformerConfig(**{k: v for k, v in config.items() if k in
                                        {f.name for f in dataclasses.fields(TransformerConfig)}}))

    def dummy_inputs(self, batch: int = 2, length: int = 5) -> dict:
        ones = tf.ones([batch, length], tf.int32)
        return {"source": ones, "target_in": ones}
