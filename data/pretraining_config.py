"""The settings of BERT pretraining examples and the names of the files they are written to (data/pretraining.py)."""
from __future__ import annotations

import dataclasses
import re
from typing import Literal

from moatkit.data.core.errors import ConfigError

FORMAT = "moatkit-pretraining/1"
MANIFEST = "manifest.json"
SHARD_GLOB = "examples-*.tfrecord"
FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights",
            "next_sentence_labels")


@dataclasses.dataclass
class PretrainingConfig:
    max_length: int = 128  # tokens per sequence, [CLS] and [SEP]s included
    max_predictions: int = 20  # masked positions per sequence (BERT: max_predictions_per_seq)
    masked_lm_prob: float = 0.15
    mask_token_rate: float = 0.8  # of the selected positions: [MASK] …
    random_token_rate: float = 0.1  # … a random regular token; the rest stay unchanged
    whole_word_masking: bool = False  # mask all pieces of a word together
    short_seq_prob: float = 0.1  # fraction of sequences given a random shorter target length
    pair_task: Literal["nsp", "sop", "none"] = "nsp"  # next-sentence, sentence-order, or one segment per sequence
    masking: Literal["static", "dynamic"] = "static"  # dynamic: store unmasked ids, mask in tf.data every epoch
    duplication_factor: int = 1  # static masking: passes over the data, each with different masks (BERT used 10)
    # blingfire's sentence model, one sentence per line, or each text is one sentence
    sentence_split: Literal["blingfire", "lines", "none"] = "blingfire"
    document_key: str | None = None  # record field (dots for meta.x): consecutive records sharing it form a document
    document_regex: str | None = None  # applied to the document_key value; group 1 is the key ('^(.*)_\d+$' on ids)
    text_fields: list[str] = dataclasses.field(default_factory=lambda: ["text", "text_pair"])
    chunk_documents: int = 2000  # documents in memory at once
    shard_size: int = 20000  # examples per TFRecord shard
    max_documents: int | None = None
    seed: int = 12345

    def validate(self):
        if self.max_length < 8:
            raise ConfigError(f"max_length={self.max_length} is too short",
                              fix="use max_length >= 8 (BERT: 128 or 512)")
        if not 0 < self.masked_lm_prob < 1:
            raise ConfigError(f"masked_lm_prob={self.masked_lm_prob} must be in (0, 1)",
                              fix="--set masked_lm_prob=0.15")
        if self.max_predictions < 1 or self.max_predictions > self.max_length:
            raise ConfigError(f"max_predictions={self.max_predictions} must be in [1, max_length]",
                              fix="BERT uses about max_length * masked_lm_prob, e.g. 20 for 128")
        if min(self.mask_token_rate, self.random_token_rate) < 0 or self.mask_token_rate + self.random_token_rate > 1:
            raise ConfigError("mask_token_rate and random_token_rate must be >= 0 and add up to at most 1",
                              fix="BERT uses 0.8 and 0.1")
        if not 0 <= self.short_seq_prob <= 1:
            raise ConfigError(f"short_seq_prob={self.short_seq_prob} must be in [0, 1]", fix="--set short_seq_prob=0.1")
        if self.duplication_factor < 1:
            raise ConfigError("duplication_factor must be >= 1", fix="--set duplication_factor=1")
        if self.masking == "dynamic" and self.duplication_factor != 1:
            raise ConfigError("duplication_factor applies to static masking only; dynamic masking re-masks every epoch",
                              fix="--set duplication_factor=1 or --set masking=static")
        if self.chunk_documents < 2 or self.shard_size < 1:
            raise ConfigError("chunk_documents must be >= 2 and shard_size >= 1", fix="--set chunk_documents=2000")
        if not self.text_fields:
            raise ConfigError("text_fields is empty", fix="--set text_fields=[text]")
        if self.document_regex is not None:
            if not self.document_key:
                raise ConfigError("document_regex needs document_key", fix="e.g. --set document_key=id")
            try:
                re.compile(self.document_regex)
            except re.error as err:
                raise ConfigError(f"document_regex {self.document_regex!r} is not a regular expression ({err})",
                                  fix="e.g. --set 'document_regex=^(.*)_\\d+$'") from None
