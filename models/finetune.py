"""Fine-tune HF `TFBertForSequenceClassification` on a dataset's train split, select on dev, report on test.

Recipe: dynamic padding over length-grouped batches, AdamW with weight-decay exclusions, linear warm-up + decay,
gradient clipping, best-on-dev weights kept. TensorBoard scalars go to `<run_dir>/{train,eval}/`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from app import env as _env  # noqa: F401

import numpy as np
import tensorflow as tf

from app.errors import ConfigError, DataError, ModelError
from data.dataset import read_manifest, read_records
from data.split import SplitConfig, ensure_splits
from models import metrics as metrics_lib
from models.schedules import WarmupLinearDecay


@dataclasses.dataclass
class FinetuneConfig:
    model: str = "minilm-l6"  # catalog name or HF-format model dir
    data: str = "mr"  # catalog name, dataset dir, or dir with train/dev/test dataset dirs
    run_dir: str = "runs/sentiment"
    max_length: int = 64
    batch_size: int = 32
    epochs: int = 1
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    max_train_examples: int | None = None  # budget knob for demos and tests
    max_eval_examples: int | None = None
    log_every: int = 20
    seed: int = 13
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)

    def validate(self):
        for name in ("max_length", "batch_size", "epochs", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config key '{name}' must be > 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"config key 'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}")
        if not 8 <= self.max_length <= 512:
            raise ConfigError(f"config key 'max_length' is {self.max_length}", fix="use 8..512 (BERT positions stop at 512)")
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"config key '{name}' must be null or >= 1, got {getattr(self, name)}")


def resolve_model_dir(model: str) -> Path:
    path = Path(model)
    if (path / "config.json").is_file():
        return path
    if path.exists() or "/" in model:
        raise ModelError(f"'{model}' is not an HF model dir (no config.json)",
                         fix="pass a catalog name (e.g. minilm-l6) or a dir written by save_pretrained")
    from data.fetch import fetch
    return fetch(model, kind="model")


# === Inputs ===

def _encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]


def _pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def length_grouped_batches(lengths: list[int], batch_size: int, rng: np.random.Generator,
                           group: int = 50) -> list[np.ndarray]:
    """Shuffles, sorts by length within windows of `group` batches, then shuffles the batches.

    Hand-written rather than tf.data's bucket_by_sequence_length because that yields a data-dependent number of
    batches, which the warm-up/decay schedule needs to know exactly in advance.
    """
    order = rng.permutation(len(lengths))
    window = batch_size * group
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def train_dataset(ids: list[list[int]], labels: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    lengths = [len(r) for r in ids]
    epoch = [0]

    def generate():
        rng = np.random.default_rng(seed + epoch[0])
        epoch[0] += 1
        for batch in length_grouped_batches(lengths, batch_size, rng):
            input_ids, mask = _pad([ids[i] for i in batch])
            yield {"input_ids": input_ids, "attention_mask": mask}, labels[batch]

    spec = tf.TensorSpec((None, None), tf.int32)
    dataset = tf.data.Dataset.from_generator(generate, output_signature=(
        {"input_ids": spec, "attention_mask": spec}, tf.TensorSpec((None,), tf.int32)))
    # Keras keeps one iterator across epochs when steps_per_epoch is set: repeat() re-runs the generator (with a
    # new shuffle) each time it is exhausted, and steps_per_epoch makes an epoch exactly one pass.
    return dataset.repeat().prefetch(2)


def predict_logits(model, ids: list[list[int]], batch_size: int = 128) -> np.ndarray:
    """Logits in input order; batches are formed over length-sorted inputs so padding stays small."""
    order = np.argsort([len(r) for r in ids], kind="stable")
    out = np.zeros((len(ids), model.config.num_labels), np.float32)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        input_ids, mask = _pad([ids[i] for i in batch])
        out[batch] = model(input_ids=input_ids, attention_mask=mask, training=False).logits.numpy()
    return out


# === Training ===

class ScalarLogger(tf.keras.callbacks.Callback):
    """Writes train loss/accuracy/learning rate every `every` steps and dev metrics after each epoch."""

    def __init__(self, *, run_dir: Path, every: int, evaluate):
        super().__init__()
        self.train_writer = tf.summary.create_file_writer(str(run_dir / "train"))
        self.eval_writer = tf.summary.create_file_writer(str(run_dir / "eval"))
        self.every, self.evaluate, self.step = every, evaluate, 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_weights = None

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            lr = self.model.optimizer.learning_rate
            lr = float(lr(self.model.optimizer.iterations) if callable(lr) else lr)
            with self.train_writer.as_default(step=self.step):
                tf.summary.scalar("loss", logs["loss"])
                tf.summary.scalar("accuracy", logs["accuracy"])
                tf.summary.scalar("learning_rate", lr)

    def on_epoch_end(self, epoch, logs=None):
        result = {"epoch": epoch + 1, "step": self.step, **self.evaluate()}
        self.history.append(result)
        with self.eval_writer.as_default(step=self.step):
            tf.summary.scalar("loss", result["loss"])
            tf.summary.scalar("accuracy", result["accuracy"])
        self.eval_writer.flush()
        self.train_writer.flush()
        if self.best is None or result["accuracy"] > self.best["accuracy"]:
            self.best, self.best_weights = result, self.model.get_weights()


def _load_split(path: Path, label_names: list[str], limit: int | None, seed: int) -> tuple[list[str], np.ndarray]:
    records = read_records(path)
    if not records:
        raise DataError(f"split '{path}' is empty", fix="use a larger dataset or larger split fractions")
    if any("text_pair" in r for r in records):
        raise DataError(f"'{path}' holds text pairs, which fine-tuning does not support yet",
                        fix="remove the text_pair field or concatenate the pair into text")
    if limit is not None and len(records) > limit:
        records = [records[i] for i in sorted(np.random.default_rng(seed).choice(len(records), limit, replace=False))]
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({str(r.get("label")) for r in records if r.get("label") not in index})
    if unknown:
        raise DataError(f"'{path}' has labels {unknown[:5]} not in the dataset's label list {label_names}",
                        fix="fix the manifest 'labels' or the records")
    return [r["text"] for r in records], np.array([index[r["label"]] for r in records], np.int32)


def build_optimizer(config: FinetuneConfig, total_steps: int) -> tf.keras.optimizers.Optimizer:
    schedule = WarmupLinearDecay(peak=config.learning_rate, total_steps=total_steps,
                                 warmup_steps=int(config.warmup_ratio * total_steps))
    optimizer = tf.keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay,
                                          global_clipnorm=config.clip_norm, epsilon=1e-6)
    optimizer.exclude_from_weight_decay(var_names=["bias", "LayerNorm", "layer_norm"])
    return optimizer


def finetune(config: FinetuneConfig, *, verbose: int = 1) -> dict:
    """Trains, keeps the best-on-dev weights, evaluates on test and saves `<run_dir>/model`. Returns the report."""
    from transformers import BertTokenizerFast, TFBertForSequenceClassification

    started = time.time()
    tf.keras.utils.set_random_seed(config.seed)
    split_dir = ensure_splits(config.data, config.split)
    label_names = read_manifest(split_dir / "train").get("labels")
    if not label_names:
        raise DataError(f"'{split_dir}/train' has no labels", fix="fine-tuning needs records with a 'label' field")
    model_dir = resolve_model_dir(config.model)
    tokenizer = BertTokenizerFast.from_pretrained(model_dir)
    texts, labels = {}, {}
    for name, limit in (("train", config.max_train_examples), ("dev", config.max_eval_examples),
                        ("test", config.max_eval_examples)):
        texts[name], labels[name] = _load_split(split_dir / name, label_names, limit, config.seed)
    ids = {name: _encode(tokenizer, texts[name], config.max_length) for name in texts}

    model = TFBertForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)})
    steps_per_epoch = math.ceil(len(ids["train"]) / config.batch_size)
    model.compile(optimizer=build_optimizer(config, steps_per_epoch * config.epochs),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    def evaluate_dev():
        logits = predict_logits(model, ids["dev"])
        return metrics_lib.classification_metrics(logits, labels["dev"], label_names, brief=True)

    run_dir = Path(config.run_dir)
    logger = ScalarLogger(run_dir=run_dir, every=config.log_every, evaluate=evaluate_dev)
    train_started = time.time()
    model.fit(train_dataset(ids["train"], labels["train"], config.batch_size, config.seed), epochs=config.epochs,
              steps_per_epoch=steps_per_epoch, callbacks=[logger], verbose=verbose)
    train_seconds = time.time() - train_started
    model.set_weights(logger.best_weights)

    test_logits = predict_logits(model, ids["test"])
    test = metrics_lib.classification_metrics(test_logits, labels["test"], label_names)
    with logger.eval_writer.as_default(step=logger.step):
        tf.summary.scalar("test_accuracy", test["accuracy"])
    logger.eval_writer.close()
    logger.train_writer.close()
    saved = run_dir / "model"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    (saved / "moat_task.json").write_text(json.dumps({
        "task": "classification", "labels": label_names, "max_length": config.max_length,
        "lower_case": bool(getattr(tokenizer, "do_lower_case", True))}, indent=2))
    metrics_lib.write_predictions(run_dir / "test_predictions.jsonl", texts["test"], test_logits, labels["test"],
                                  label_names)
    report = {"config": dataclasses.asdict(config), "model_dir": str(model_dir), "split_dir": str(split_dir),
              "sizes": {name: len(ids[name]) for name in ids}, "labels": label_names,
              "dev_history": logger.history, "best_dev": logger.best, "test": test,
              "timings": {"train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - started, 1),
                          "train_examples_per_second": round(len(ids["train"]) * config.epochs / train_seconds, 1)},
              "saved_model_dir": str(saved), "tensorboard": f"tensorboard --logdir {run_dir}"}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report
