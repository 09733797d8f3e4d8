"""Benchmark: our Transformer vs. the same model built on `tf.keras.layers.MultiHeadAttention`.

Same sizes, same random inputs, same run: training tokens/s (teacher-forced steps) and greedy / beam decoding
sentences/s. Keras' attention has no key/value cache, so its decoding re-runs the decoder on the whole prefix at
every step — what a user of the stock layer gets; ours decodes incrementally from the cache.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time


import tensorflow as tf

from moatkit.models.seq2seq.decoding import beam_search, greedy_decode
from moatkit.models.layers import decoder_layer, encoder_layer
from moatkit.models.transformer import Transformer, TransformerConfig


class KerasAttention(tf.keras.layers.Layer):
    """tf.keras.layers.MultiHeadAttention behind our attention call signature (no cache)."""

    def __init__(self, *, num_heads: int, key_dim: int, dropout: float = 0.0, kernel_initializer="glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.attention = tf.keras.layers.MultiHeadAttention(num_heads=num_heads, key_dim=key_dim, dropout=dropout,
                                                            kernel_initializer=kernel_initializer)

    def build(self, query_shape, value_shape=None):
        super().build(query_shape)  # the Keras layer builds itself on its first (eager) call

    def call(self, query, value=None, *, attention_mask=None, use_causal_mask=False, training=None):
        value = query if value is None else value
        return self.attention(query, value, attention_mask=attention_mask, use_causal_mask=use_causal_mask,
                              training=training)


@contextlib.contextmanager
def _keras_attention():
    """Builds blocks with KerasAttention instead of ours (swapping the name the block modules look up)."""
    saved = encoder_layer.MultiHeadAttention, decoder_layer.MultiHeadAttention
    encoder_layer.MultiHeadAttention = decoder_layer.MultiHeadAttention = KerasAttention
    try:
        yield
    finally:
        encoder_layer.MultiHeadAttention, decoder_layer.MultiHeadAttention = saved


def _build(config: TransformerConfig, keras: bool) -> Transformer:
    with _keras_attention() if keras else contextlib.nullcontext():
        model = Transformer(config)
        model(model.dummy_inputs())
    return model


def _timed(fn, repeats: int) -> float:
    fn()  # trace / warm up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_transformer(*, config: TransformerConfig | None = None, batch: int = 32, length: int = 32,
                      train_steps: int = 5, decode_length: int = 24, beam_size: int = 4, seed: int = 0) -> dict:
    config = config or TransformerConfig(source_vocab_size=8000, target_vocab_size=8000, dim=256, encoder_layers=3,
                                         decoder_layers=3, num_heads=4, intermediate_dim=1024, dropout=0.1)
    config = dataclasses.replace(config, max_length=max(config.max_length, length + 1, decode_length + 1))
    rng = tf.random.Generator.from_seed(seed)
    source = rng.uniform([batch, length], 4, config.source_vocab_size, tf.int32)
    target = rng.uniform([batch, length + 1], 4, config.target_vocab_size, tf.int32)
    results = {"config": dataclasses.asdict(config), "batch": batch, "length": length, "decode_length": decode_length,
               "beam_size": beam_size}
    for name, keras in (("ours", False), ("keras_mha", True)):
        tf.keras.utils.set_random_seed(seed)
        model = _build(config, keras)
        optimizer = tf.keras.optimizers.Adam(1e-4)

        @tf.function
        def train_step():
            with tf.GradientTape() as tape:
                logits = model({"source": source, "target_in": target[:, :-1]}, training=True)
                loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(target[:, 1:], logits,
                                                                                      from_logits=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            return loss

        use_cache = not keras
        greedy = tf.function(lambda: greedy_decode(model, source, max_length=decode_length, bos_id=2, eos_id=-1,
                                                   use_cache=use_cache))
        beam = tf.function(lambda: beam_search(model, source, beam_size=beam_size, max_length=decode_length,
                                               bos_id=2, eos_id=-1, use_cache=use_cache))
        step_seconds = _timed(train_step, train_steps)
        results[name] = {"train_tokens_per_second": round(2 * batch * length / step_seconds, 1),
                         "greedy_sentences_per_second": round(batch / _timed(greedy, 1), 2),
                         "beam_sentences_per_second": round(batch / _timed(beam, 1), 2),
                         "kv_cache": use_cache}
    for key in ("train_tokens_per_second", "greedy_sentences_per_second", "beam_sentences_per_second"):
        results[f"ratio_{key}"] = round(results["ours"][key] / results["keras_mha"][key], 2)
    return results
