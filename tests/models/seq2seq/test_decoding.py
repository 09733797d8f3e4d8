"""Greedy and beam search: cached == uncached tokens, beam scores are the model's own log-probabilities."""

import numpy as np
import pytest
import tensorflow as tf

from moatkit.models.seq2seq.decoding import beam_search, greedy_decode, length_penalty
from moatkit.models.transformer import Transformer, TransformerConfig

BOS, EOS, PAD = 2, 3, 0


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(0)
    config = TransformerConfig(source_vocab_size=40, target_vocab_size=30, dim=32, encoder_layers=2, decoder_layers=2,
                               num_heads=4, intermediate_dim=64, dropout=0.0, max_length=32)
    model = Transformer(config)
    model(model.dummy_inputs())
    # sharpen the output distribution so that random weights give varied lengths and clear argmaxes
    model.output_bias.assign(np.random.default_rng(0).normal(0, 2.0, size=30).astype("float32"))
    return model


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(1)
    ids = rng.integers(4, 40, size=(3, 9)).astype("int32")
    ids[1, 6:] = PAD
    ids[2, 3:] = PAD
    return tf.constant(ids)


def _sequence_logp(model, source, tokens):
    """Teacher-forced log-probability of `tokens` (up to and including EOS) and its length."""
    tokens = tokens.numpy()
    scores, lengths = [], []
    for row, seq in enumerate(tokens):
        n = int(np.argmax(seq == EOS)) + 1 if (seq == EOS).any() else len(seq)
        target_in = tf.constant([[BOS] + list(seq[:n - 1])], tf.int32)
        logp = tf.nn.log_softmax(model({"source": source[row:row + 1], "target_in": target_in}))[0].numpy()
        scores.append(sum(logp[t, seq[t]] for t in range(n)))
        lengths.append(n)
    return np.array(scores), np.array(lengths)


def test_greedy_cached_equals_uncached(model, source):
    # eager here (the loop runs step by step); the beam test and the seq2seq export run decoding inside tf.function
    cached, uncached = (greedy_decode(model, source, max_length=12, bos_id=BOS, eos_id=EOS, use_cache=use_cache)
                        for use_cache in (True, False))
    assert cached.shape == (3, 12) and cached.dtype == tf.int32
    np.testing.assert_array_equal(cached.numpy(), uncached.numpy())
    # greedy = argmax of the teacher-forced distribution at every step
    seq = cached.numpy()[0]
    n = int(np.argmax(seq == EOS)) + 1 if (seq == EOS).any() else len(seq)
    logits = model({"source": source[:1], "target_in": tf.constant([[BOS] + list(seq[:n - 1])])})
    np.testing.assert_array_equal(np.argmax(logits[0].numpy(), -1), seq[:n])


def test_beam_cached_equals_uncached_and_scores_are_log_probs(model, source, alpha=0.6):
    @tf.function
    def decode(s, use_cache):
        return beam_search(model, s, beam_size=3, alpha=alpha, max_length=12, bos_id=BOS, eos_id=EOS,
                           use_cache=use_cache, return_scores=True)
    (cached, cached_score), (uncached, uncached_score) = decode(source, True), decode(source, False)
    np.testing.assert_array_equal(cached.numpy(), uncached.numpy())
    np.testing.assert_allclose(cached_score.numpy(), uncached_score.numpy(), atol=1e-4)
    logp, lengths = _sequence_logp(model, source, cached)
    np.testing.assert_allclose(cached_score.numpy(), logp / length_penalty(lengths, alpha).numpy(), atol=1e-4)
    # beam search never returns a worse (length-penalised) hypothesis than greedy
    greedy = greedy_decode(model, source, max_length=12, bos_id=BOS, eos_id=EOS)
    greedy_logp, greedy_lengths = _sequence_logp(model, source, greedy)
    finished = (greedy.numpy() == EOS).any(axis=1)
    greedy_score = greedy_logp / length_penalty(greedy_lengths, alpha).numpy()
    assert (cached_score.numpy()[finished] >= greedy_score[finished] - 1e-4).all()


@pytest.mark.slow
def test_beam_size_one_with_no_penalty_is_greedy(model, source):
    beam = beam_search(model, source, beam_size=1, alpha=0.0, max_length=12, bos_id=BOS, eos_id=EOS)
    greedy = greedy_decode(model, source, max_length=12, bos_id=BOS, eos_id=EOS)
    np.testing.assert_array_equal(beam.numpy(), greedy.numpy())
