"""Knowledge distillation (Hinton et al. 2015): the fine-tuned baseline (teacher) trains a shallower BERT (student).

- Student: TFBertForSequenceClassification with `student_layers` layers. At the teacher's width it starts from the
  teacher's embeddings, pooler, classifier and evenly spaced layers ending at the last one (6 → 3: layers 1, 3, 5),
  which keeps the top layer the pooler was trained on; with `student_hidden` set it starts from random weights.
- Loss: alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) · cross-entropy(labels).
  T² keeps the soft-target gradients on the scale of the hard-label ones as T grows.
- Teacher logits are computed once (dropout off), so an epoch costs student passes only.
- `unlabeled`: extra in-domain text (a dataset dir or catalog name, e.g. `amazon`) trained on soft targets only.
  Sentences also in the task's dev/test split are dropped (they would leak the evaluation), as are those already in
  train; the notes count both.
- The student is saved as a normal HF dir (save_pretrained + tokenizer + moat_task.json), so serving/export works.
"""
from __future__ import annotations

import math
import unicodedata
from pathlib import Path


import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ConfigError, DataError
from moatkit.models.compress.base import (INPUT_NAMES, Batch, CompressContext, DistillSettings, Variant, encode,
                                          logits_of)

UNLABELED = -1  # label of a sentence that only has soft targets


# === The student ===

def student_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers that initialise the student, always ending at the teacher's last layer."""
    if not 1 <= student_layers <= teacher_layers:
        raise ConfigError(f"config key 'distill.student_layers' is {student_layers}; the teacher has "
                          f"{teacher_layers} layers", fix=f"use 1..{teacher_layers}, e.g. {teacher_layers // 2 or 1}")
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def build_student(teacher, *, layers: int, hidden: int | None = None):
    """A TFBertForSequenceClassification with `layers` layers; at the teacher's width its weights are copied
    from the teacher (student_layer_map); returns (student, the teacher layer indices copied or None)."""
    from transformers import BertConfig, TFBertForSequenceClassification

    source = teacher.config
    values = source.to_dict()
    values["num_hidden_layers"] = layers
    copy = hidden is None or hidden == source.hidden_size
    if not copy:
        if hidden % source.num_attention_heads:
            raise ConfigError(f"config key 'distill.student_hidden' ({hidden}) must be divisible by the teacher's "
                              f"{source.num_attention_heads} attention heads",
                              fix=f"e.g. --set distill.student_hidden={source.num_attention_heads * 16}")
        values.update(hidden_size=hidden, intermediate_size=4 * hidden)
    mapping = student_layer_map(source.num_hidden_layers, layers) if copy else None
    student = TFBertForSequenceClassification(BertConfig.from_dict(values))
    student(student.dummy_inputs, training=False)  # builds the weights
    if copy:
        student.bert.embeddings.set_weights(teacher.bert.embeddings.get_weights())
        for target, index in zip(student.bert.encoder.layer, mapping):
            target.set_weights(teacher.bert.encoder.layer[index].get_weights())
        student.bert.pooler.set_weights(teacher.bert.pooler.get_weights())
        student.classifier.set_weights(teacher.classifier.get_weights())
    return student, mapping


# === Loss and data ===

class DistillationLoss(tf.keras.losses.Loss):
    """y_true packs (label or UNLABELED, teacher logits...) per row: Keras hands a loss one target tensor.
    y_pred: student logits (batch, labels)."""

    def __init__(self, *, temperature: float, alpha: float, name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature, self.alpha = temperature, alpha

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        labels, teacher = tf.cast(y_true[:, 0], tf.int32), y_true[:, 1:]  # (batch,), (batch, labels)
        student = tf.cast(y_pred, tf.float32)
        soft = kl_divergence(teacher, student, self.temperature) * self.temperature ** 2  # (batch,)
        labeled = labels >= 0
        hard = tf.keras.losses.sparse_categorical_crossentropy(tf.maximum(labels, 0), student, from_logits=True)
        return self.alpha * soft + (1 - self.alpha) * tf.where(labeled, hard, 0.0)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "alpha": self.alpha}


def kl_divergence(teacher_logits, student_logits, temperature: float = 1.0):
    """KL(softmax(teacher / T) ‖ softmax(student / T)) per row, in nats."""
    teacher = tf.nn.log_softmax(tf.cast(teacher_logits, tf.float32) / temperature, axis=-1)
    student = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature, axis=-1)
    return tf.reduce_sum(tf.exp(teacher) * (teacher - student), axis=-1)


def predict_logits(model, arrays: Batch, batch_size: int = 64) -> np.ndarray:
    """A classifier's logits (HF output or a logits tensor) on fixed-width token arrays, in order."""
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec, spec])
    def call(input_ids, attention_mask):
        return tf.cast(logits_of(model(input_ids=input_ids, attention_mask=attention_mask, training=False)), tf.float32)

    n = len(arrays["input_ids"])
    return np.concatenate([call(arrays["input_ids"][i:i + batch_size], arrays["attention_mask"][i:i + batch_size])
                           .numpy() for i in range(0, n, batch_size)]) if n else np.zeros((0, model.config.num_labels))


def _normalized(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def unlabeled_texts(source: str, context: CompressContext, limit: int | None) -> tuple[list[str], dict]:
    """Texts of a dataset dir or catalog name, minus those in the task's splits; returns (texts, counts)."""
    from moatkit.data.dataset import read_records
    from moatkit.data.fetch import fetch

    path = Path(source)
    if (path / "manifest.json").is_file():
        records = read_records(path)
    elif path.exists() or "/" in source:
        raise DataError(f"config key 'distill.unlabeled' is '{source}', which is not a dataset dir (no manifest.json)",
                        fix="pass a catalog name (e.g. amazon, tweets) or a dir written by `moat data`")
    else:
        records = read_records(fetch(source, kind="dataset"))
    texts = [r["text"] for r in records if isinstance(r.get("text"), str) and r["text"].strip()]
    held_out = {_normalized(t) for split in ("dev", "test") for t in context.texts[split]}
    train = {_normalized(t) for t in context.texts["train"]}
    kept, seen = [], set()
    counts = {"records": len(records), "without_text": len(records) - len(texts), "in_dev_or_test": 0,
              "in_train": 0, "duplicates": 0}
    for text in texts:
        key = _normalized(text)
        reason = ("in_dev_or_test" if key in held_out else "in_train" if key in train
                  else "duplicates" if key in seen else None)
        if reason:
            counts[reason] += 1
            continue
        seen.add(key)
        kept.append(text)
    if limit is not None and len(kept) > limit:
        index = np.random.default_rng(context.config.seed).choice(len(kept), limit, replace=False)
        counts["over_max_unlabeled"] = len(kept) - limit
        kept = [kept[i] for i in sorted(index)]
    counts["used"] = len(kept)
    return kept, counts


# === Training ===

def teacher_dataset(arrays: Batch, labels: np.ndarray, teacher_logits: np.ndarray, *, batch_size: int,
                    seed: int) -> tf.data.Dataset:
    """Shuffled (features, [label, teacher logits...]) batches, the packing DistillationLoss reads."""
    targets = np.concatenate([labels[:, None].astype(np.float32), teacher_logits.astype(np.float32)], axis=1)
    return (tf.data.Dataset.from_tensor_slices(({name: arrays[name] for name in INPUT_NAMES}, targets))
            .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True).batch(batch_size).prefetch(2))


def distill(student, *, arrays: Batch, labels: np.ndarray, teacher_logits: np.ndarray, settings: DistillSettings,
            seed: int = 13, verbose: int = 0) -> int:
    """Trains `student` in place on (arrays, labels | UNLABELED, teacher_logits) with models/finetune.py's
    optimizer recipe. Returns the number of optimizer steps."""
    from moatkit.models.finetune import FinetuneConfig, build_optimizer

    n = len(labels)
    steps = math.ceil(n / settings.batch_size) * settings.epochs
    if steps == 0:
        return 0
    data = teacher_dataset(arrays, labels, teacher_logits, batch_size=settings.batch_size, seed=seed)
    student.compile(optimizer=build_optimizer(FinetuneConfig(learning_rate=settings.learning_rate), steps),
                    loss=DistillationLoss(temperature=settings.temperature, alpha=settings.alpha))
    student.fit(data, epochs=settings.epochs, verbose=verbose)
    return steps


def compress(context: CompressContext, settings: DistillSettings, *, verbose: int = 0) -> list[Variant]:
    settings.validate()
    teacher = context.load_baseline()
    student, mapping = build_student(teacher, layers=settings.student_layers, hidden=settings.student_hidden)
    train = context.arrays["train"]
    arrays = {name: train[name] for name in INPUT_NAMES}
    labels = context.targets["train"].astype(np.int64)
    notes = {"teacher_layers": teacher.config.num_hidden_layers, "student_layers": settings.student_layers,
             "student_hidden": student.config.hidden_size, "initialised_from_teacher_layers": mapping,
             "temperature": settings.temperature, "alpha": settings.alpha, "epochs": settings.epochs,
             "learning_rate": settings.learning_rate, "labeled_examples": len(labels)}
    if settings.unlabeled:
        texts, counts = unlabeled_texts(settings.unlabeled, context, settings.max_unlabeled)
        extra = encode(context.tokenizer, texts, context.max_length) if texts else None
        if extra is not None:
            arrays = {name: np.concatenate([arrays[name], extra[name]]) for name in INPUT_NAMES}
            labels = np.concatenate([labels, np.full(len(texts), UNLABELED, np.int64)])
        notes["unlabeled"] = {"source": settings.unlabeled, **counts}
    teacher_logits = predict_logits(teacher, arrays)
    dev = context.arrays["dev"]
    dev_teacher = predict_logits(teacher, dev)
    notes["dev_kl_to_teacher_before"] = float(np.mean(kl_divergence(dev_teacher, predict_logits(student, dev))))
    notes["steps"] = distill(student, arrays=arrays, labels=labels, teacher_logits=teacher_logits,
                             settings=settings, seed=context.config.seed, verbose=verbose)
    notes["dev_kl_to_teacher_after"] = float(np.mean(kl_divergence(dev_teacher, predict_logits(student, dev))))
    name = f"distill-{settings.student_layers}l" + (f"-{student.config.hidden_size}h" if mapping is None else "")
    hf_dir = context.save_hf(student, name)
    return [Variant(name=name, method="distill", model=student, hf_dir=hf_dir, params=int(student.count_params()),
                    notes=notes)]
