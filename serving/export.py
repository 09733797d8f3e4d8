"""Export a fine-tuned classifier into a TF Serving model repository `<repo>/<model>/<version>/`.

The SavedModel's `serving_default` takes raw strings (`text`: (batch,) string) and tokenizes in the graph, so
clients need no tokenizer. It returns `probabilities` (batch, labels) float32, `label_id` (batch,) int64 and
`label` (batch,) string. `assets.extra/tf_serving_warmup_requests` holds PredictionLog warm-up requests.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from app import env as _env  # noqa: F401

import tensorflow as tf

from app.errors import ConfigError, ModelError
from serving.text_tokenizer import InGraphBertTokenizer

WARMUP_TEXTS = ("a wonderful, moving film", "dull and far too long", "What is the capital of France ?")


@dataclasses.dataclass
class ExportConfig:
    model_dir: str = "runs/sentiment/model"  # a dir written by `moat finetune` (HF format + moat_task.json)
    repo: str = "artifacts/models"
    name: str = "sentiment"
    version: int | None = None  # default: one more than the newest version in the repository
    max_length: int | None = None  # default: the fine-tuning max_length

    def validate(self):
        if self.version is not None and self.version < 1:
            raise ConfigError(f"config key 'version' must be >= 1, got {self.version}",
                              fix="TF Serving only loads positive integer version dirs")
        if self.max_length is not None and not 8 <= self.max_length <= 512:
            raise ConfigError(f"config key 'max_length' is {self.max_length}", fix="use 8..512")


class TextClassifierModule(tf.Module):
    def __init__(self, *, model, vocab: list[str], labels: list[str], max_length: int, lower_case: bool = True):
        super().__init__()
        self.model = model
        self.tokenizer = InGraphBertTokenizer(vocab=vocab, max_length=max_length, lower_case=lower_case)
        self.labels = tf.constant(labels)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        input_ids, attention_mask = self.tokenizer(text)  # (batch, seq)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, training=False).logits
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)  # (batch, labels)
        label_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "label_id": label_id, "label": tf.gather(self.labels, label_id)}


def load_classifier(model_dir: str | Path):
    """Returns (HF TF model, vocab, task info) for a dir written by `moat finetune`."""
    from transformers import TFAutoModelForSequenceClassification

    model_dir = Path(model_dir)
    task_file = model_dir / "moat_task.json"
    if not task_file.is_file() or not (model_dir / "vocab.txt").is_file():
        raise ModelError(f"'{model_dir}' is not a fine-tuned moatkit model (needs moat_task.json and vocab.txt)",
                         fix="pass the `model` dir inside a `moat finetune` run dir")
    task = json.loads(task_file.read_text())
    model = TFAutoModelForSequenceClassification.from_pretrained(model_dir)
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return model, vocab, task


def next_version(base: Path) -> int:
    versions = [int(p.name) for p in base.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def write_warmup(version_dir: Path, model_name: str, texts=WARMUP_TEXTS) -> None:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
            name=model_name, signature_name="serving_default"))
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(list(texts), dtype=tf.string))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())


def export_classifier(config: ExportConfig) -> dict:
    """Writes a new version atomically (temp dir, then rename) so a polling server never sees half a model."""
    model, vocab, task = load_classifier(config.model_dir)
    module = TextClassifierModule(model=model, vocab=vocab, labels=task["labels"],
                                  max_length=config.max_length or task["max_length"],
                                  lower_case=task.get("lower_case", True))
    base = Path(config.repo) / config.name
    base.mkdir(parents=True, exist_ok=True)
    version = next_version(base) if config.version is None else config.version
    final = base / str(version)
    if final.exists():
        raise ModelError(f"version {version} already exists at '{final}'", fix="omit --set version to use the next one")
    staging = base / f".tmp-{version}-{int(time.time())}"
    try:
        tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
        write_warmup(staging, config.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(final)
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    return {"version_dir": str(final), "version": version, "bytes": size, "labels": task["labels"]}
