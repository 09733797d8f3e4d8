"""Export a trained translation model as a SavedModel that TF Serving (or moat-model-server) serves directly.

`serving_default`: `text` (batch,) string → `translation` (batch,) string. Tokenization (tf.text
FastWordpieceTokenizer), beam search with the key/value cache and detokenization all run in the graph, so clients
send raw sentences: `{"instances": ["Im Anfang schuf Gott Himmel und Erde."]}`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path


import tensorflow as tf

from moatkit.data.core.errors import ConfigError
from moatkit.models.seq2seq.decoding import beam_search, greedy_decode
from moatkit.models.seq2seq.data import BOS_ID, EOS_ID, PAD_ID, SubwordTokenizer
from moatkit.models.seq2seq.train import load_model_dir

WARMUP_SENTENCES = ("Im Anfang schuf Gott Himmel und Erde.", "Und Gott sprach: Es werde Licht!")


@dataclasses.dataclass
class Seq2SeqExportConfig:
    model_dir: str = "runs/translate-de-en/model"  # the model/ dir of a `moat train-seq2seq` run
    repo: str = "artifacts/models"
    name: str = "translate"
    version: int | None = None  # default: one more than the newest version in the repository
    beam_size: int | None = None  # default: the training config's; 1 = greedy
    length_penalty: float | None = None
    max_length: int | None = None  # tokens per source sentence and per translation; default: the training config's

    def validate(self):
        if self.version is not None and self.version < 1:
            raise ConfigError(f"config key 'version' must be >= 1, got {self.version}",
                              fix="TF Serving only loads positive integer version dirs")
        if self.beam_size is not None and self.beam_size < 1:
            raise ConfigError(f"config key 'beam_size' must be >= 1, got {self.beam_size}",
                              fix="e.g. --set beam_size=4")


class Translator(tf.Module):
    def __init__(self, *, model, source_vocab, target_vocab, max_length: int, beam_size: int, alpha: float):
        super().__init__()
        self.model = model
        self.source_tokenizer = SubwordTokenizer(source_vocab)
        self.target_tokenizer = SubwordTokenizer(target_vocab)
        self.max_length, self.beam_size, self.alpha = max_length, beam_size, alpha

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def translate(self, text):
        tokens = self.source_tokenizer.tokenize(text)[:, :self.max_length - 1]  # (B, (S))
        eos = tf.fill([tokens.nrows(), 1], EOS_ID)
        source = tf.concat([tokens, tf.RaggedTensor.from_tensor(eos)], axis=1).to_tensor(PAD_ID)  # (B, S)
        if self.beam_size > 1:
            ids = beam_search(self.model, source, beam_size=self.beam_size, alpha=self.alpha,
                              max_length=self.max_length, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID)
        else:
            ids = greedy_decode(self.model, source, max_length=self.max_length, bos_id=BOS_ID, eos_id=EOS_ID,
                                pad_id=PAD_ID)
        return {"translation": self.target_tokenizer.detokenize(ids)}


def build_translator(config: Seq2SeqExportConfig) -> Translator:
    model, source_vocab, target_vocab, info = load_model_dir(config.model_dir)
    return Translator(model=model, source_vocab=source_vocab, target_vocab=target_vocab,
                      max_length=config.max_length or info.get("max_length", 128),
                      beam_size=config.beam_size or info.get("beam_size", 4),
                      alpha=info.get("length_penalty", 0.6) if config.length_penalty is None else config.length_penalty)


def export_translator(config: Seq2SeqExportConfig) -> dict:
    """Writes `<repo>/<name>/<version>/` atomically (temp dir, then rename) with warm-up requests."""
    from moatkit.models.export import save_signatures, write_version, write_warmup

    translator = build_translator(config)

    def write(staging: Path) -> None:
        save_signatures(translator, staging, {"serving_default": translator.translate})
        write_warmup(staging, config.name, texts=WARMUP_SENTENCES)

    final, version, size = write_version(Path(config.repo) / config.name, config.version, write)
    return {"version_dir": str(final), "version": version, "bytes": size, "signatures": ["serving_default"]}
