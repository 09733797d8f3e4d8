"""Encoder/Decoder/Transformer: BERT parity, config round trip, mixed precision, TFMOT pruning."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from moatkit.data.core.errors import ConfigError, ModelError
from moatkit.models.layers import EncoderLayer
from moatkit.models.checkpoints import bert_state_from_tf_model, encoder_kwargs_from_bert_config, load_bert_weights
from moatkit.models.transformer import Encoder, Transformer, TransformerConfig

TINY = TransformerConfig(source_vocab_size=50, target_vocab_size=40, dim=16, encoder_layers=2, decoder_layers=2,
                         num_heads=2, intermediate_dim=32, dropout=0.0, max_length=20)


def test_encoder_matches_hf_bert_on_minilm_weights(minilm_dir):
    from transformers import BertConfig, BertTokenizerFast, TFBertModel

    hf = TFBertModel.from_pretrained(minilm_dir)
    tokenizer = BertTokenizerFast.from_pretrained(minilm_dir)
    batch = tokenizer(["a wonderful, moving film", "dull and far too long, with a plot nobody could follow"],
                      padding=True, return_tensors="tf")
    expected = hf(**batch, training=False).last_hidden_state
    encoder = Encoder(**encoder_kwargs_from_bert_config(BertConfig.from_pretrained(minilm_dir)))
    unused = load_bert_weights(encoder, bert_state_from_tf_model(hf))
    assert unused == ["pooler.dense.bias", "pooler.dense.weight"]
    got = encoder(batch["input_ids"], padding_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"])
    mask = batch["attention_mask"].numpy().astype(bool)  # padded positions are not compared (both are arbitrary)
    assert np.abs(got.numpy()[mask] - expected.numpy()[mask]).max() <= 1e-4


def test_bert_weight_errors_name_the_weight():
    from transformers import BertConfig

    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    encoder = Encoder(**encoder_kwargs_from_bert_config(config))
    with pytest.raises(ModelError, match="embeddings.word_embeddings.weight"):
        load_bert_weights(encoder, {})


def test_config_round_trip_and_validation():
    model = Transformer(TINY)
    inputs = {"source": tf.constant([[5, 6, 7, 0]]), "target_in": tf.constant([[1, 8, 9]])}
    logits = model(inputs)
    assert logits.shape == (1, 3, 40) and logits.dtype == tf.float32
    clone = Transformer.from_config(model.get_config())
    clone(inputs)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(inputs).numpy(), logits.numpy(), atol=1e-6)
    assert clone.get_config() == model.get_config()
    with pytest.raises(ConfigError, match="num_heads"):
        TransformerConfig(dim=30, num_heads=4).validate()


def test_source_padding_does_not_change_outputs():
    model = Transformer(TINY)
    short = model({"source": tf.constant([[5, 6, 7]]), "target_in": tf.constant([[1, 8]])})
    padded = model({"source": tf.constant([[5, 6, 7, 0, 0]]), "target_in": tf.constant([[1, 8]])})
    np.testing.assert_allclose(short.numpy(), padded.numpy(), atol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_under_mixed_float16(norm_first):
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = Transformer(TransformerConfig(**{**TINY.__dict__, "norm_first": norm_first}))
        logits = model({"source": tf.constant([[5, 6, 7, 0]]), "target_in": tf.constant([[1, 8, 9]])})
        assert logits.dtype == tf.float32 and np.isfinite(logits.numpy()).all()
        assert model.encoder.blocks[0].attention.compute_dtype == "float16"
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_prune_functional_model_to_half_with_stock_tfmot():
    tf.keras.utils.set_random_seed(0)
    tokens = tf.keras.Input([12], dtype=tf.int32)
    x = tf.keras.layers.Embedding(50, 16)(tokens)
    x = EncoderLayer(num_heads=2, intermediate_dim=32, dropout=0.0)(x)
    x = tf.keras.layers.GlobalAveragePooling1D()(x)
    outputs = tf.keras.layers.Dense(2)(x)
    model = tf.keras.Model(tokens, outputs)
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x_train, y_train = rng.integers(1, 50, size=(48, 12)), rng.integers(0, 2, size=48)
    pruned.fit(x_train, y_train, epochs=1, batch_size=16, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    block = next(layer for layer in stripped.layers if isinstance(layer, EncoderLayer))
    kernels = block.get_prunable_weights()
    assert len(kernels) == 6  # q, k, v, attention output, FFN in and out
    for kernel in kernels:
        assert abs(float(np.mean(kernel.numpy() == 0)) - 0.5) < 0.01, kernel.name
    assert stripped.predict(x_train[:4], verbose=0).shape == (4, 2)


@pytest.mark.slow
def test_bench_ours_vs_keras_mha_runs():
    from moatkit.models.seq2seq.bench import bench_transformer

    result = bench_transformer(config=TINY, batch=4, length=8, train_steps=1, decode_length=6, beam_size=2)
    for name in ("ours", "keras_mha"):
        assert result[name]["train_tokens_per_second"] > 0 and result[name]["beam_sentences_per_second"] > 0
    assert result["ours"]["kv_cache"] and not result["keras_mha"]["kv_cache"]
    assert set(result) >= {"ratio_train_tokens_per_second", "ratio_greedy_sentences_per_second"}
