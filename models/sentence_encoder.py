"""A sentence encoder exported as a SavedModel: raw strings in, unit-length sentence embeddings out.

Mean pooling over the attention mask, then L2 normalisation: the pooling all-MiniLM-L6-v2 was trained with
(sentence-transformers' modules.json: Pooling(mean) → Normalize), so cosine similarity is a dot product. The
tokenizer runs in the graph (data/text_tokenizer.py), so `moat-model-server` or TF Serving serves it to any client.

Signature `serving_default`: `text` (batch,) string → `embedding` (batch, hidden) float32, ‖embedding‖ = 1.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import tensorflow as tf

from moatkit.data.core.errors import ConfigError, ModelError
from moatkit.data.text_tokenizer import InGraphBertTokenizer
from moatkit.models.export import save_signatures, write_version, write_warmup

ENCODER_FILE = "assets.extra/moat_encoder.json"  # what the version encodes with: checkpoint, max_length, dim
WARMUP_QUERIES = ("How do I make a Python script executable on Unix?", "Is Python a good language for beginners?")


@dataclasses.dataclass
class EncoderExportConfig:
    model: str = "minilm-l6"  # catalog name or an HF-format BERT dir (config.json + tf_model.h5, vocab.txt)
    repo: str = "artifacts/models"
    name: str = "support-encoder"
    version: int | None = None  # default: the next free version
    max_length: int = 256  # tokens per text (MiniLM was trained on 128-token pairs; 256 measured best on FAQ answers)

    def validate(self):
        if not 8 <= self.max_length <= 512:
            raise ConfigError(f"config key 'max_length' is {self.max_length}", fix="use 8..512")


class SentenceEncoderModule(tf.Module):
    def __init__(self, *, encoder, vocab: list[str], max_length: int, lower_case: bool = True):
        super().__init__()
        self.encoder = encoder  # an HF TFBertModel
        self.tokenizer = InGraphBertTokenizer(vocab=vocab, max_length=max_length, lower_case=lower_case)

    def embed(self, text):
        input_ids, attention_mask = self.tokenizer(text)  # (batch, seq)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              training=False).last_hidden_state  # (batch, seq, hidden)
        mask = tf.cast(attention_mask, hidden.dtype)[:, :, None]  # (batch, seq, 1)
        pooled = tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        return {"embedding": tf.math.l2_normalize(tf.cast(pooled, tf.float32), axis=-1)}  # (batch, hidden)

    def signatures(self) -> dict:
        spec = [tf.TensorSpec([None], tf.string, name="text")]
        return {"serving_default": tf.function(self.embed, input_signature=spec)}


def load_encoder(model: str) -> tuple[object, list[str], Path]:
    """(TFBertModel, vocab, dir) for a catalog name or an HF-format dir."""
    from transformers import TFBertModel

    from moatkit.models.checkpoints import fetch_model

    model_dir = Path(model) if Path(model).is_dir() else fetch_model(model)
    if not (model_dir / "vocab.txt").is_file() or not (model_dir / "config.json").is_file():
        raise ModelError(f"'{model_dir}' is not a BERT checkpoint dir (needs config.json and vocab.txt)",
                         fix="pass a catalog name such as minilm-l6 or an HF-format BERT dir")
    encoder = TFBertModel.from_pretrained(model_dir)
    return encoder, (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines(), model_dir


def export_sentence_encoder(config: EncoderExportConfig) -> dict:
    """Writes `<repo>/<name>/<version>/` atomically; returns {version_dir, version, bytes, dim}."""
    config.validate()
    encoder, vocab, model_dir = load_encoder(config.model)
    module = SentenceEncoderModule(encoder=encoder, vocab=vocab, max_length=config.max_length)
    signatures = module.signatures()
    dim = int(encoder.config.hidden_size)

    def write(staging: Path) -> None:
        save_signatures(module, staging, signatures)
        write_warmup(staging, config.name, texts=WARMUP_QUERIES)
        (staging / ENCODER_FILE).write_text(json.dumps(
            {"model": str(model_dir), "max_length": config.max_length, "dim": dim, "pooling": "mean",
             "normalized": True}, indent=2))

    final, version, size = write_version(Path(config.repo) / config.name, config.version, write)
    return {"version_dir": str(final), "version": version, "bytes": size, "dim": dim}
