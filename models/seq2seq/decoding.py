"""Greedy and beam-search decoding for models.transformer.Transformer, with incremental key/value caching.

Both run as one `tf.while_loop` (wrap the call in `tf.function` or use it inside an exported graph). With
`use_cache=True` each step feeds one token and reuses every layer's keys/values from a preallocated cache; with
`use_cache=False` each step re-runs the decoder on the whole prefix (the reference: both give the same tokens).

Beam search is hand-written because TF core has no seq2seq beam search (tensorflow-addons' is deprecated and
tf-models-official would pull a large dependency tree for one function). It follows tensor2tensor's alive/finished
formulation: each step expands the `beam_size` alive hypotheses into 2*beam_size candidates; those that end in EOS
compete for the finished set under the GNMT length penalty ((5 + length) / 6) ** alpha, the rest stay alive.
Outputs are (B, max_length) int32 token ids after BOS, EOS included, padded with `pad_id`.
"""
from __future__ import annotations


import tensorflow as tf

NEG_INF = -1.0e9


def _step_fn(model, memory, memory_mask, *, max_length: int, use_cache: bool):
    """Returns (initial cache, step(tokens (N, max_length + 1), index, cache) → (float32 logits (N, V), cache))."""
    if use_cache:
        cache = model.decoder.init_cache(memory, max_length)

        def step(tokens, index, cache):
            logits, cache = model.decode(tokens[:, index:index + 1], memory, memory_mask, cache=cache,
                                         decode_index=index, training=False)
            return logits[:, 0], cache
        return cache, step

    def step(tokens, index, cache):
        logits = model.decode(tokens[:, :index + 1], memory, memory_mask, training=False)  # (N, index + 1, V)
        return logits[:, -1], cache
    return [], step


def _any_batch(structure):
    """Loop shape invariants: the batch dimension may be unknown (or inferred differently) between iterations."""
    return tf.nest.map_structure(lambda t: tf.TensorShape([None]).concatenate(t.shape[1:]), structure)


def _write(tokens, index, values):
    """tokens (..., L) with `values` (...) written at position index."""
    at = tf.range(tf.shape(tokens)[-1]) == index
    return tf.where(at, tf.expand_dims(values, -1), tokens)


def greedy_decode(model, source, *, max_length: int, bos_id: int, eos_id: int, pad_id: int = 0,
                  use_cache: bool = True) -> tf.Tensor:
    """source (B, S) int → (B, max_length) int32."""
    memory, memory_mask = model.encode(source, training=False)
    batch = tf.shape(source)[0]
    cache, step = _step_fn(model, memory, memory_mask, max_length=max_length, use_cache=use_cache)
    tokens = tf.concat([tf.fill([batch, 1], bos_id), tf.fill([batch, max_length], pad_id)], axis=1)  # (B, L + 1)
    finished = tf.zeros([batch], tf.bool)

    def body(i, tokens, finished, cache):
        logits, cache = step(tokens, i, cache)
        next_token = tf.cast(tf.argmax(logits, axis=-1), tf.int32)
        next_token = tf.where(finished, pad_id, next_token)
        return i + 1, _write(tokens, i + 1, next_token), finished | (next_token == eos_id), cache

    def cond(i, tokens, finished, cache):
        return (i < max_length) & ~tf.reduce_all(finished)

    _, tokens, _, _ = tf.while_loop(cond, body, [tf.constant(0), tokens, finished, cache],
                                    shape_invariants=[tf.TensorShape([]), *_any_batch([tokens, finished, cache])])
    return tokens[:, 1:]


def length_penalty(length, alpha: float):
    """GNMT (Wu et al. 2016): ((5 + length) / 6) ** alpha."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def _flatten(t):
    shape = tf.shape(t)
    return tf.reshape(t, tf.concat([[shape[0] * shape[1]], shape[2:]], 0))


def _unflatten(t, batch):
    shape = tf.shape(t)
    return tf.reshape(t, tf.concat([[batch, shape[0] // batch], shape[1:]], 0))


def beam_search(model, source, *, beam_size: int = 4, alpha: float = 0.6, max_length: int, bos_id: int, eos_id: int,
                pad_id: int = 0, use_cache: bool = True, return_scores: bool = False):
    """source (B, S) int → best hypothesis (B, max_length) int32 [and its length-penalised log-probability (B,)]."""
    batch = tf.shape(source)[0]
    k = beam_size
    memory, memory_mask = model.encode(source, training=False)
    # every beam of a sentence shares its encoder output: (B, S, M) → (B * K, S, M)
    memory = _flatten(tf.repeat(memory[:, None], k, axis=1))
    memory_mask = _flatten(tf.repeat(memory_mask[:, None], k, axis=1))
    cache, step = _step_fn(model, memory, memory_mask, max_length=max_length, use_cache=use_cache)
    length = max_length + 1
    alive_seq = tf.concat([tf.fill([batch, k, 1], bos_id), tf.fill([batch, k, max_length], pad_id)], axis=2)
    # only the first beam is live at the start, so the K beams do not all expand the same prefix
    alive_logp = tf.tile(tf.constant([[0.0] + [NEG_INF] * (k - 1)]), [batch, 1])  # (B, K)
    finished_seq = tf.fill([batch, k, length], pad_id)
    finished_score = tf.fill([batch, k], NEG_INF)  # length-penalised log-probabilities

    def body(i, alive_seq, alive_logp, finished_seq, finished_score, cache):
        logits, cache = step(_flatten(alive_seq), i, cache)  # (B * K, V)
        vocab = tf.shape(logits)[-1]
        logp = tf.nn.log_softmax(logits, axis=-1)
        candidates = alive_logp[:, :, None] + _unflatten(logp, batch)  # (B, K, V)
        top_logp, top_flat = tf.math.top_k(tf.reshape(candidates, [batch, -1]), k=2 * k)  # (B, 2K)
        top_beam, top_token = top_flat // vocab, tf.cast(top_flat % vocab, tf.int32)
        top_seq = _write(tf.gather(alive_seq, top_beam, batch_dims=1), i + 1, top_token)  # (B, 2K, L)
        ends = top_token == eos_id
        # alive: the best K candidates that did not just end
        alive_logp, keep = tf.math.top_k(tf.where(ends, NEG_INF, top_logp), k=k)
        alive_seq = tf.gather(top_seq, keep, batch_dims=1)
        beam_of = tf.gather(top_beam, keep, batch_dims=1)  # (B, K) which old beam each new one extends
        # reorder the self-attention caches; cross-attention keys/values are the same for all beams of a sentence
        cache = [{"self": tf.nest.map_structure(
            lambda c: _flatten(tf.gather(_unflatten(c, batch), beam_of, batch_dims=1)), layer["self"]),
            "cross": layer["cross"]} for layer in cache]
        # finished: the best K among the old finished and the candidates that just ended
        new_score = tf.where(ends, top_logp / length_penalty(i + 1, alpha), NEG_INF)
        pool_seq = tf.concat([finished_seq, top_seq], axis=1)
        pool_score = tf.concat([finished_score, new_score], axis=1)
        finished_score, best = tf.math.top_k(pool_score, k=k)
        finished_seq = tf.gather(pool_seq, best, batch_dims=1)
        return i + 1, alive_seq, alive_logp, finished_seq, finished_score, cache

    def cond(i, alive_seq, alive_logp, finished_seq, finished_score, cache):
        # stop early once no alive hypothesis can beat the worst finished one (alive log-probs only decrease and
        # the best possible penalty is the one at max_length when alpha > 0)
        best_alive = alive_logp[:, 0] / length_penalty(max_length, alpha) if alpha > 0 else alive_logp[:, 0]
        worst_finished = tf.reduce_min(finished_score, axis=1)
        return (i < max_length) & ~tf.reduce_all(worst_finished > best_alive)

    state = [alive_seq, alive_logp, finished_seq, finished_score, cache]
    _, alive_seq, alive_logp, finished_seq, finished_score, _ = tf.while_loop(
        cond, body, [tf.constant(0), *state], shape_invariants=[tf.TensorShape([]), *_any_batch(state)])
    # a sentence with no finished hypothesis (max_length reached) returns its best alive one
    any_finished = finished_score[:, 0] > NEG_INF / 2
    seq = tf.where(any_finished[:, None], finished_seq[:, 0], alive_seq[:, 0])[:, 1:]
    score = tf.where(any_finished, finished_score[:, 0], alive_logp[:, 0] / length_penalty(max_length, alpha))
    return (seq, score) if return_scores else seq
