"""Masked-LM masking, the same rule twice: in numpy while examples are written (static) and in-graph in tf.data
at read time (dynamic, fresh every epoch); both draw on the vocab's `VocabTables`."""
from __future__ import annotations

import collections
import dataclasses
import re
from pathlib import Path

import numpy as np

from moatkit.data.core.errors import DataError
from moatkit.data.pretraining_config import PretrainingConfig


@dataclasses.dataclass(frozen=True)
class VocabTables:
    """What masking needs to know about a WordPiece vocab (BERT conventions: '[X]' special, '##' continuation)."""
    vocab_size: int
    mask_id: int
    cls_id: int
    sep_id: int
    pad_id: int
    special: np.ndarray  # (vocab,) bool: [PAD] [CLS] [SEP] [MASK] [UNK] [unusedN] — never masked, never sampled
    continuation: np.ndarray  # (vocab,) bool: '##' pieces
    regular_ids: np.ndarray  # ids a random replacement is drawn from

    @classmethod
    def from_vocab(cls, vocab: list[str]) -> "VocabTables":
        missing = [t for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]") if t not in vocab]
        if missing:
            raise DataError(f"the vocab lacks {', '.join(missing)}", fix="train one with `moat data tokenizer`")
        special = np.array([re.fullmatch(r"\[[A-Za-z0-9_]+\]", t) is not None for t in vocab])
        return cls(vocab_size=len(vocab), mask_id=vocab.index("[MASK]"), cls_id=vocab.index("[CLS]"),
                   sep_id=vocab.index("[SEP]"), pad_id=vocab.index("[PAD]"), special=special,
                   continuation=np.array([t.startswith("##") for t in vocab]),
                   regular_ids=np.flatnonzero(~special))


def read_vocab(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"'{path}' does not exist", fix="pass a tokenizer dir made by `moat data tokenizer`")
    return path.read_text(encoding="utf-8").splitlines()


def mask_sequence(ids: np.ndarray, *, tables: VocabTables, config: PretrainingConfig, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, collections.Counter]:
    """Static masking of one sequence → (masked ids, sorted positions, original ids at them, replacement counts).

    Selects whole words (or single pieces) in random order while they fit in the budget — the same rule as the
    tf.data path — with a budget of floor(n * masked_lm_prob + U(0,1)) so the expected rate is exact (BERT's round()
    overshoots on short sequences).
    """
    candidates = np.flatnonzero(~tables.special[ids])
    n = len(candidates)
    counts: collections.Counter = collections.Counter(candidates=n)
    if n == 0:
        return ids, np.zeros(0, np.int64), np.zeros(0, np.int64), counts
    budget = min(config.max_predictions, max(1, int(n * config.masked_lm_prob + rng.random())))
    if config.whole_word_masking:
        starts = [k for k, p in enumerate(candidates)
                  if not tables.continuation[ids[p]] or k == 0 or candidates[k - 1] != p - 1]
        words = np.split(candidates, starts[1:])
    else:
        words = [candidates[k: k + 1] for k in range(n)]
    chosen, size = [], 0
    for w in rng.permutation(len(words)):
        if size + len(words[w]) > budget:
            break
        chosen.append(words[w])
        size += len(words[w])
    positions = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    labels = ids[positions]
    masked = ids.copy()
    draw = rng.random(len(positions))
    to_mask = draw < config.mask_token_rate
    to_random = ~to_mask & (draw < config.mask_token_rate + config.random_token_rate)
    masked[positions[to_mask]] = tables.mask_id
    masked[positions[to_random]] = rng.choice(tables.regular_ids, size=int(to_random.sum()))
    counts.update(masked=len(positions), replaced_mask=int(to_mask.sum()), replaced_random=int(to_random.sum()),
                  kept=int(len(positions) - to_mask.sum() - to_random.sum()))
    return masked, positions, labels, counts


def dynamic_mask(features: dict, seed, *, tables: VocabTables, config: PretrainingConfig) -> dict:
    """Masks a parsed batch in-graph: same selection rule and rates as the static path, fresh every epoch.

    Hand-written rather than tensorflow_text.mask_language_model because that op draws from stateful, unseeded RNG
    (masks cannot be reproduced from a seed) and samples random replacements from the whole vocab, [PAD] included.
    Here every batch gets a stateless seed from Dataset.random(rerandomize_each_iteration=True): reproducible for a
    seed, different every epoch.
    """
    import tensorflow as tf

    ids = features["input_ids"]  # (batch, seq)
    batch, seq = tf.shape(ids)[0], tf.shape(ids)[1]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)
    special = tf.constant(tables.special)
    candidate = tf.logical_and(features["input_mask"] > 0, tf.logical_not(tf.gather(special, ids)))  # (batch, seq)
    if config.whole_word_masking:
        previous = tf.pad(candidate[:, :-1], [[0, 0], [1, 0]])
        piece = tf.gather(tf.constant(tables.continuation), ids)
        start = tf.logical_and(candidate, tf.logical_or(tf.logical_not(piece), tf.logical_not(previous)))
    else:
        start = candidate
    n = tf.reduce_sum(tf.cast(candidate, tf.float32), axis=1)  # (batch,)
    budget = tf.floor(n * config.masked_lm_prob + tf.random.stateless_uniform([batch], seeds[0]))
    budget = tf.minimum(float(config.max_predictions), tf.maximum(budget, 1.0))
    budget = tf.where(n > 0, budget, 0.0)

    word = tf.cumsum(tf.cast(start, tf.int32), axis=1) - 1  # (batch, seq): word index of each candidate piece
    word = tf.where(candidate, word, seq)  # non-candidates go to the spare slot `seq`
    flat_word = word + tf.range(batch)[:, None] * (seq + 1)
    word_len = tf.reshape(tf.math.unsorted_segment_sum(tf.cast(candidate, tf.float32), flat_word, batch * (seq + 1)),
                          [batch, seq + 1])  # (batch, seq + 1)
    score = tf.where(start, tf.random.stateless_uniform([batch, seq], seeds[1]), 2.0)
    order = tf.argsort(score, axis=1)  # word starts in random order, then everything else
    order_word = tf.gather(word, order, batch_dims=1)
    order_start = tf.gather(start, order, batch_dims=1)
    order_len = tf.gather(word_len, order_word, batch_dims=1) * tf.cast(order_start, tf.float32)
    take = tf.logical_and(order_start, tf.cumsum(order_len, axis=1) <= budget[:, None])
    chosen = tf.math.unsorted_segment_max(tf.cast(take, tf.int32), order_word + tf.range(batch)[:, None] * (seq + 1),
                                          batch * (seq + 1))
    chosen = tf.reshape(chosen, [batch, seq + 1]) > 0
    selected = tf.logical_and(candidate, tf.gather(chosen, word, batch_dims=1))  # (batch, seq)

    positions_all = tf.range(seq)[None, :]
    key = tf.where(selected, positions_all, seq + positions_all)
    first = tf.sort(key, axis=1)[:, : config.max_predictions]  # selected positions first, ascending
    real = first < seq
    positions = tf.where(real, first, 0)  # (batch, predictions)
    draw = tf.random.stateless_uniform([batch, seq], seeds[2])
    random_ids = tf.gather(tf.constant(tables.regular_ids, tf.int32),
                           tf.random.stateless_uniform([batch, seq], seeds[3], minval=0,
                                                       maxval=len(tables.regular_ids), dtype=tf.int32))
    masked = tf.where(tf.logical_and(selected, draw < config.mask_token_rate), tables.mask_id,
                      tf.where(tf.logical_and(selected, draw < config.mask_token_rate + config.random_token_rate),
                               random_ids, ids))
    out = dict(features)
    out.update(input_ids=masked, masked_lm_positions=positions,
               masked_lm_ids=tf.where(real, tf.gather(ids, positions, batch_dims=1), 0),
               masked_lm_weights=tf.cast(real, tf.float32))
    return out
