"""Translation data: verse-aligned pairs → held-out split by chapter/book → WordPiece vocabularies → tf.data.

The tokenizer is tensorflow_text's FastWordpieceTokenizer, used both for training data and inside the exported
SavedModel, so serving sees exactly the training ids. Vocabularies are trained with HF `tokenizers` (WordPiece,
BERT pre-tokenization, case kept) on the training split only.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


import tensorflow as tf
import tensorflow_text as tf_text

from moatkit.data.core.errors import DataError

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


def load_pairs(data: str, *, source_lang: str) -> list[dict]:
    """Dataset dir (or catalog name) with text/text_pair and meta.text_lang/pair_lang
    → [{id, source, target, book, chapter}]."""
    from moatkit.data.dataset import read_records
    path = Path(data)
    if not (path / "manifest.json").is_file():
        from moatkit.data.fetch import fetch
        path = fetch(data, kind="dataset")
    pairs = []
    for record in read_records(path):
        meta = record.get("meta") or {}
        if not record.get("text_pair") or "text_lang" not in meta or "pair_lang" not in meta:
            raise DataError(f"record '{record.get('id')}' in '{path}' is not a translation pair",
                            fix="use a dataset with text, text_pair and meta.text_lang/pair_lang (e.g. bible-en-de)")
        if source_lang not in (meta["text_lang"], meta["pair_lang"]):
            raise DataError(f"record '{record['id']}' has languages {meta['text_lang']}/{meta['pair_lang']}, "
                            f"not source_lang={source_lang!r}", fix="set source_lang to one of them")
        forward = meta["pair_lang"] == source_lang
        pairs.append({"id": record["id"], "source": record["text_pair"] if forward else record["text"],
                      "target": record["text"] if forward else record["text_pair"],
                      "book": meta.get("book"), "chapter": meta.get("chapter")})
    return pairs


def _unit_fraction(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def split_pairs(pairs: list[dict], *, by: str, dev_fraction: float, test_fraction: float, seed: int) -> dict:
    """Whole chapters (or books) go to one split, chosen by a seeded hash: no test verse shares a chapter with
    training data."""
    splits = {"train": [], "dev": [], "test": []}
    for pair in pairs:
        key = f"{pair['book']}" if by == "book" else f"{pair['book']}-{pair['chapter']}"
        if pair["book"] is None:
            key = pair["id"]
        u = _unit_fraction(key, seed)
        name = "test" if u < test_fraction else "dev" if u < test_fraction + dev_fraction else "train"
        splits[name].append(pair)
    for name, items in splits.items():
        if not items:
            raise DataError(f"the {name} split is empty (split_by={by})",
                            fix="raise dev_fraction/test_fraction or split by chapter")
    return splits


def train_vocab(texts: list[str], *, vocab_size: int, min_frequency: int = 2) -> list[str]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                        min_frequency=min_frequency, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    # the trainer breaks ties in hash-map order, so its ids (and, on ties at the size cutoff, a few tokens) vary
    # between runs: sorting removes the order part; a run saves its vocabularies and a resume reuses them
    return list(SPECIALS) + sorted(set(tokenizer.get_vocab()) - set(SPECIALS))


class SubwordTokenizer(tf.Module):
    """Raw strings ⇄ WordPiece ids in the graph (NFC, split on whitespace and punctuation, case kept)."""

    def __init__(self, vocab: list[str], *, name=None):
        super().__init__(name=name)
        if list(vocab[:4]) != list(SPECIALS):
            raise DataError(f"vocabulary must start with {SPECIALS}",
                            fix="train it with models.seq2seq.data.train_vocab")
        self.vocab_size = len(vocab)
        self.tokenizer = tf_text.FastWordpieceTokenizer(vocab=list(vocab), suffix_indicator="##", unknown_token="[UNK]",
                                                        no_pretokenization=False, support_detokenization=True,
                                                        token_out_type=tf.int32)

    def tokenize(self, text):
        """(B,) string → (B, (tokens)) int32 ragged, without BOS/EOS."""
        text = tf_text.normalize_utf8(text, "NFC")
        return self.tokenizer.tokenize(text)

    def detokenize(self, ids):
        """(B, L) int ids (EOS and padding allowed) → (B,) string: tokens up to the first EOS, specials dropped."""
        ids = tf.cast(ids, tf.int32)
        before_eos = tf.cumsum(tf.cast(ids == EOS_ID, tf.int32), axis=1, exclusive=True) == 0
        keep = before_eos & (ids >= len(SPECIALS))
        text = self.tokenizer.detokenize(tf.ragged.boolean_mask(ids, keep))
        # undo the pre-tokenizer's spaces around punctuation (cosmetic: sacrebleu re-tokenizes anyway)
        text = tf.strings.regex_replace(text, r" ([.,;:!?)\]“])", r"\1")
        text = tf.strings.regex_replace(text, r"([(\[„]) ", r"\1")
        return tf.strings.regex_replace(text, r" ' (s|t)\b", r"'\1")


def encode(tokenizer: SubwordTokenizer, texts: list[str], *, max_length: int,
           add_bos: bool) -> tuple[tf.RaggedTensor, int]:
    """→ ragged ids [BOS] tokens [EOS] (BOS only for targets) truncated to max_length, and how many were truncated."""
    ids = tokenizer.tokenize(tf.constant(texts))
    room = max_length - 1 - int(add_bos)
    truncated = int(tf.reduce_sum(tf.cast(ids.row_lengths() > room, tf.int32)))
    ids = ids[:, :room]
    batch = ids.nrows()
    parts = ([tf.fill([batch, 1], BOS_ID)] if add_bos else []) + [ids, tf.fill([batch, 1], EOS_ID)]
    return tf.concat([p if isinstance(p, tf.RaggedTensor) else tf.RaggedTensor.from_tensor(p) for p in parts],
                     axis=1), truncated


def make_dataset(source: tf.RaggedTensor, target: tf.RaggedTensor, *, batch_tokens: int, shuffle: bool, seed: int,
                 max_length: int) -> tf.data.Dataset:
    """Length-bucketed batches of about `batch_tokens` target tokens: {"source", "target_in"}, "target_out" padded."""
    ds = tf.data.Dataset.range(int(source.nrows()))
    if shuffle:
        ds = ds.shuffle(int(source.nrows()), seed=seed, reshuffle_each_iteration=False)
    ds = ds.map(lambda i: (source[i], target[i]))  # one ragged row → a dense (L,) tensor
    boundaries = [b for b in (8, 16, 24, 32, 48, 64, 96, 128, 192, 256) if b < max_length] + [max_length + 1]
    sizes = [max(1, batch_tokens // b) for b in boundaries] + [max(1, batch_tokens // (max_length + 1))]
    ds = ds.bucket_by_sequence_length(lambda s, t: tf.maximum(tf.shape(s)[0], tf.shape(t)[0]),
                                      bucket_boundaries=boundaries, bucket_batch_sizes=sizes,
                                      padded_shapes=([None], [None]), padding_values=(PAD_ID, PAD_ID))
    ds = ds.map(lambda s, t: ({"source": s, "target_in": t[:, :-1]}, t[:, 1:]))
    return ds.prefetch(tf.data.AUTOTUNE)
