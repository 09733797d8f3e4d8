"""In-graph BERT tokenization for exported text models (raw strings in, ids + mask out).

Uses tensorflow_text's FastBertTokenizer, whose ops ship with TF Serving and which moat-model-server imports.
Pre-cleaning mirrors HF's BertTokenizer (control/format characters and U+FFFD removed), which makes the ids
identical to `BertTokenizerFast` on all but 1 of 15,956 MR+TREC sentences (NFKD-splitting of '½').
"""
from __future__ import annotations


import tensorflow as tf
import tensorflow_text as tf_text


class InGraphBertTokenizer(tf.Module):
    def __init__(self, *, vocab: list[str], max_length: int, lower_case: bool = True, name=None):
        super().__init__(name=name)
        if max_length < 3:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        self.max_length = max_length
        self.cls_id = vocab.index("[CLS]")
        self.sep_id = vocab.index("[SEP]")
        self.pad_id = vocab.index("[PAD]")
        self.tokenizer = tf_text.FastBertTokenizer(vocab=vocab, token_out_type=tf.int64, unknown_token="[UNK]",
                                                   lower_case_nfd_strip_accents=lower_case)

    def __call__(self, text: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """text: (batch,) string → input_ids, attention_mask: (batch, seq) int32, seq ≤ max_length."""
        text = tf.strings.regex_replace(text, r"[\t\n\r]", " ")
        text = tf.strings.regex_replace(text, r"[\x{FFFD}\p{Cc}\p{Cf}]", "")
        tokens = self.tokenizer.tokenize(text)[:, : self.max_length - 2]  # (batch, (tokens))
        batch = tf.shape(text)[0]
        cls = tf.fill([batch, 1], tf.constant(self.cls_id, tf.int64))
        sep = tf.fill([batch, 1], tf.constant(self.sep_id, tf.int64))
        tokens = tf.concat([tf.RaggedTensor.from_tensor(cls), tokens, tf.RaggedTensor.from_tensor(sep)], axis=1)
        input_ids = tokens.to_tensor(default_value=self.pad_id)  # (batch, seq)
        mask = tf.sequence_mask(tokens.row_lengths(), maxlen=tf.shape(input_ids)[1])
        return tf.cast(input_ids, tf.int32), tf.cast(mask, tf.int32)
