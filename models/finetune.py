"""Fine-tune HF `TFBertForSequenceClassification` on a task's train split, select on dev, report on test.

Recipe: dynamic padding over length-grouped batches, AdamW with weight-decay exclusions, linear warm-up + decay,
gradient clipping, early stopping on dev with best-weights restore, seeds, optional class weights, mixed precision
and any distribution strategy (the model is built inside its scope). Regression (`num_labels=1`) trains on
standardised scores. TensorBoard: scalars in `<run_dir>/{train,eval}/`, HParams, the confusion matrix image.
"""
from __future__ import annotations

import dataclasses
import json
import hashlib
import math
import re
import shutil
import time
from pathlib import Path
from typing import Literal


import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ConfigError, DataError, ModelError
from moatkit.data.dataset import field_value, read_records
from moatkit.data.split import SplitConfig, ensure_splits
from moatkit.models import metrics as metrics_lib
from moatkit.models.distribute import Precision, pick_strategy, set_precision, split_cpu
from moatkit.models.schedules import WarmupLinearDecay
from moatkit.models.tasks import Task, extract, get_task


@dataclasses.dataclass
class FinetuneConfig:
    task: str = "mr-polarity"  # mr-polarity, mr-intensity, trec-6, trec-50, or classification/regression + data
    model: str = "minilm-l6"  # catalog name or HF-format model dir
    init: Literal["pretrained", "random"] = "pretrained"  # random: the model dir's architecture, fresh weights
    data: str | None = None  # default: the task's catalog dataset; or a dataset dir / dir with train,dev,test
    target: str | None = None  # record field with the label/score; default: the task's
    run_dir: str = "runs/sentiment"
    max_length: int = 64
    batch_size: int = 32  # global batch, split across replicas
    epochs: int | None = None  # default: the task's (see models/tasks.py)
    learning_rate: float | None = None  # peak learning rate; default: the task's
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    layer_decay: float = 1.0  # < 1: layer-wise learning rates, the embeddings slowest (see LayerwiseAdamW)
    ema_momentum: float | None = None  # e.g. 0.99: dev/test/export use an exponential moving average of the weights
    patience: int = 2  # early stopping: epochs without dev improvement
    class_weights: Literal["none", "balanced"] = "none"
    # auto: mixed_float16 on tensor-core GPUs, mixed_bfloat16 on TPUs and bf16-capable CPUs, else float32
    precision: Precision = "auto"
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    logical_cpus: int = 0  # >1 splits the CPU into that many devices (multi-device runs without GPUs)
    max_train_examples: int | None = None  # budget knob for demos and tests
    max_eval_examples: int | None = None
    log_every: int = 20
    seed: int = 13
    resume: bool = True  # continue an interrupted run from <run_dir>/checkpoints (same config only)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)

    def validate(self):
        get_task(self.task)
        if self.task in ("classification", "regression") and not self.data:
            raise ConfigError(f"task '{self.task}' needs data=DIR", fix="e.g. --set data=path/to/dataset_dir")
        for name in ("batch_size", "epochs", "learning_rate", "log_every", "patience"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"config key '{name}' must be > 0, got {getattr(self, name)}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"config key 'layer_decay' must be in (0, 1], got {self.layer_decay}",
                              fix="e.g. --set layer_decay=0.9, or 1.0 for one learning rate")
        if self.ema_momentum is not None and not 0 < self.ema_momentum < 1:
            raise ConfigError(f"config key 'ema_momentum' must be null or in (0, 1), got {self.ema_momentum}",
                              fix="e.g. --set ema_momentum=0.99 (about the last 100 steps); null: the raw weights")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"config key 'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}")
        if not 8 <= self.max_length <= 512:
            raise ConfigError(f"config key 'max_length' is {self.max_length}", fix="use 8..512 (BERT positions stop at 512)")
        if self.init not in ("pretrained", "random"):
            raise ConfigError(f"config key 'init' is '{self.init}'", fix="use pretrained or random")
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
    from moatkit.models.checkpoints import fetch_model
    return fetch_model(model)


# === Inputs ===

def length_grouped_batches(lengths: list[int], batch_size: int, rng: np.random.Generator,
                           group: int = 50) -> list[np.ndarray]:
    """Shuffles, sorts by length within windows of `group` batches, then shuffles the batches (a short final
    batch stays last, so tf.data's padded_batch regroups exactly these batches).

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
    short = [b for b in batches if len(b) < batch_size]
    full = [b for b in batches if len(b) == batch_size]
    rng.shuffle(full)
    return full + short


def _features(encoded: dict, index: int) -> dict:
    return {name: np.asarray(encoded[name][index], np.int32) for name in ("input_ids", "attention_mask",
                                                                           "token_type_ids")}


def train_dataset(encoded: dict, targets: np.ndarray, batch_size: int, seed: int,
                  first_epoch: int = 0) -> tf.data.Dataset:
    """Examples in length-grouped order, padded per batch (dynamic padding), one epoch per generator pass.
    Epoch k is shuffled with seed + k, so a resumed run sees the batches an uninterrupted one would."""
    lengths = [len(ids) for ids in encoded["input_ids"]]
    epoch = [first_epoch]

    def generate():
        rng = np.random.default_rng(seed + epoch[0])
        epoch[0] += 1
        for batch in length_grouped_batches(lengths, batch_size, rng):
            for i in batch:
                yield _features(encoded, i), targets[i]

    spec = tf.TensorSpec((None,), tf.int32)
    dataset = tf.data.Dataset.from_generator(generate, output_signature=(
        {"input_ids": spec, "attention_mask": spec, "token_type_ids": spec},
        tf.TensorSpec((), tf.as_dtype(targets.dtype))))
    # Keras keeps one iterator across epochs when steps_per_epoch is set: repeat() re-runs the generator (with a
    # new shuffle) each time it is exhausted, and steps_per_epoch makes an epoch exactly one pass.
    return dataset.padded_batch(batch_size).repeat().prefetch(2)


def predict_outputs(model, encoded: dict, batch_size: int = 128) -> np.ndarray:
    """Model outputs (logits) in input order, float32; batches over length-sorted inputs keep padding small."""
    ids = encoded["input_ids"]
    order = np.argsort([len(r) for r in ids], kind="stable")
    out = np.zeros((len(ids), model.config.num_labels), np.float32)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(ids[i]) for i in batch)
        features = {}
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            padded = np.zeros((len(batch), width), np.int32)
            for row, i in enumerate(batch):
                padded[row, :len(encoded[name][i])] = encoded[name][i]
            features[name] = padded
        out[batch] = tf.cast(model(**features, training=False).logits, tf.float32).numpy()
    return out


# === Training ===

class EvalAndLog(tf.keras.callbacks.Callback):
    """Train scalars every `every` steps; after each epoch, dev metrics, best weights and early stopping."""

    def __init__(self, *, run_dir: Path, every: int, evaluate, patience: int, classification: bool):
        super().__init__()
        self.train_writer = tf.summary.create_file_writer(str(run_dir / "train"))
        self.eval_writer = tf.summary.create_file_writer(str(run_dir / "eval"))
        self.every, self.evaluate, self.patience, self.classification = every, evaluate, patience, classification
        self.step, self.since_best, self.eval_seconds = 0, 0, 0.0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_weights = None

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            lr = self.model.optimizer.learning_rate  # the schedule's current value; a MirroredVariable in a scope
            lr = float(tf.convert_to_tensor(lr(self.model.optimizer.iterations) if callable(lr) else lr))
            with self.train_writer.as_default(step=self.step):
                tf.summary.scalar("loss", logs["loss"])
                if self.classification:
                    tf.summary.scalar("accuracy", logs["accuracy"])
                tf.summary.scalar("learning_rate", lr)

    def on_epoch_end(self, epoch, logs=None):
        tick = time.time()
        raw = None
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)  # under a loss scale
        if optimizer.use_ema:  # score (and keep) the averaged weights; training goes on from the raw ones
            raw = self.model.get_weights()
            optimizer.finalize_variable_values(self.model.trainable_variables)
        result = {"epoch": epoch + 1, "step": self.step, **self.evaluate()}
        self.eval_seconds += time.time() - tick
        self.history.append(result)
        with self.eval_writer.as_default(step=self.step):
            for name in ("loss", "accuracy", "macro_f1", "pearson"):
                if name in result:
                    tf.summary.scalar(name, result[name])
        self.eval_writer.flush()
        self.train_writer.flush()
        if self.best is None or result["score"] > self.best["score"]:
            self.best, self.best_weights, self.since_best = result, self.model.get_weights(), 0
        else:
            self.since_best += 1
            if self.since_best >= self.patience:
                self.model.stop_training = True
        if raw is not None:
            self.model.set_weights(raw)


class Float32Loss(tf.keras.losses.Loss):
    """Cross-entropy on logits (classification) or squared error (regression), computed in float32 whatever the
    precision policy. A Loss subclass, not a lambda, so Model.fit scales it by the global batch under any strategy."""

    def __init__(self, *, classification: bool, name: str = "float32_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.classification = classification

    def call(self, y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)  # (batch, labels) logits or (batch, 1) scores
        y_true = tf.reshape(y_true, [-1])  # compile() hands labels over as (batch, 1)
        if self.classification:
            return tf.keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)  # (batch,)
        return tf.square(tf.cast(y_true, tf.float32) - y_pred[:, 0])  # (batch,)

    def get_config(self):
        return {**super().get_config(), "classification": self.classification}


class EpochCheckpoint(tf.keras.callbacks.Callback):
    """After each epoch (and after EvalAndLog): model + optimizer state, the best-on-dev weights and the logger's
    history go to <run_dir>/checkpoints, so an interrupted run resumes at the next epoch."""

    def __init__(self, *, directory: Path, fingerprint: str, logger: EvalAndLog, train_clock):
        super().__init__()
        self.directory, self.fingerprint, self.logger, self.train_clock = directory, fingerprint, logger, train_clock
        self.manager = None

    def set_model(self, model):
        super().set_model(model)
        self.manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=model.optimizer),
                                                  str(self.directory), max_to_keep=1)

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=epoch + 1)
        np.savez(self.directory / "best_weights.npz", *self.logger.best_weights)
        state = {"fingerprint": self.fingerprint, "epoch": epoch + 1, "step": self.logger.step,
                 "history": self.logger.history, "best": self.logger.best, "since_best": self.logger.since_best,
                 "stopped": bool(self.model.stop_training), "train_seconds": self.train_clock()}
        tmp = self.directory / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.directory / "state.json")  # atomic: a crash mid-write never leaves a torn state


def config_fingerprint(config: FinetuneConfig) -> str:
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("resume", "log_every")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def restore_checkpoint(directory: Path, model, logger: EvalAndLog, fingerprint: str) -> dict | None:
    """Restores an interrupted run's state into `model` and `logger`; returns the saved state or None."""
    state_file = directory / "state.json"
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    if state["fingerprint"] != fingerprint:
        raise ConfigError(f"'{directory}' holds checkpoints of a run with a different config",
                          fix="use another run_dir, or --set resume=false to start this one over")
    model.optimizer.build(model.trainable_variables)  # slots must exist before their values are restored
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(
        tf.train.latest_checkpoint(str(directory))).assert_existing_objects_matched()
    with np.load(directory / "best_weights.npz") as saved:
        logger.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    logger.history, logger.best, logger.since_best, logger.step = (state["history"], state["best"],
                                                                   state["since_best"], state["step"])
    return state


class LayerwiseAdamW(tf.keras.optimizers.AdamW):
    """AdamW with layer-wise learning-rate decay (Howard & Ruder 2018; Clark et al. 2020): encoder layer k of L
    steps `decay ** (L + 1 - k)` as far as the head, the embeddings (k = 0) least. Keras optimizers hold one
    learning rate, so each variable's update is scaled after it is made: v ← v₀ + s·(v₁ − v₀), which is
    Adam's step at rate s·lr. The decoupled weight decay, applied before the update, keeps the global rate."""

    def __init__(self, *, layer_decay: float, num_layers: int, **kwargs):
        super().__init__(**kwargs)
        self.layer_decay, self.num_layers = layer_decay, num_layers

    def scale(self, name: str) -> float:
        layer = re.search(r"/layer_\._(\d+)/", name)
        depth = int(layer.group(1)) + 1 if layer else 0 if "/embeddings/" in name else self.num_layers + 1
        return self.layer_decay ** (self.num_layers + 1 - depth)

    def update_step(self, gradient, variable):
        scale = self.scale(variable.name)  # Python, at trace time
        if scale == 1.0:
            return super().update_step(gradient, variable)
        before = tf.identity(variable)
        super().update_step(gradient, variable)
        variable.assign(before + scale * (variable - before))

    def get_config(self):
        return {**super().get_config(), "layer_decay": self.layer_decay, "num_layers": self.num_layers}


def build_optimizer(config: FinetuneConfig, total_steps: int,
                    num_layers: int = 0) -> tf.keras.optimizers.Optimizer:
    schedule = WarmupLinearDecay(peak=config.learning_rate, total_steps=total_steps,
                                 warmup_steps=int(config.warmup_ratio * total_steps))
    options = dict(learning_rate=schedule, weight_decay=config.weight_decay, global_clipnorm=config.clip_norm,
                   epsilon=1e-6)
    if config.ema_momentum:
        options.update(use_ema=True, ema_momentum=config.ema_momentum)
    optimizer = (LayerwiseAdamW(layer_decay=config.layer_decay, num_layers=num_layers, **options)
                 if config.layer_decay < 1 else tf.keras.optimizers.AdamW(**options))
    optimizer.exclude_from_weight_decay(var_names=["bias", "LayerNorm", "layer_norm"])
    return optimizer


def _sample(records: list[dict], limit: int | None, seed: int) -> list[dict]:
    if limit is None or len(records) <= limit:
        return records
    return [records[i] for i in sorted(np.random.default_rng(seed).choice(len(records), limit, replace=False))]


def load_task_data(config: FinetuneConfig, task: Task) -> tuple[Path, dict, list[str] | None]:
    """Returns the split dir, {split: (texts, pairs, targets)} and the label names (None for regression)."""
    data = config.data or task.data
    target = config.target or task.target
    split_config = dataclasses.replace(config.split, stratify_field=target) if task.kind == "classification" \
        else config.split
    split_dir = ensure_splits(data, split_config)
    splits, train_labels = {}, set()
    for name, limit in (("train", config.max_train_examples), ("dev", config.max_eval_examples),
                        ("test", config.max_eval_examples)):
        records = read_records(split_dir / name)
        if not records:
            raise DataError(f"split '{split_dir / name}' is empty", fix="use a larger dataset or split fractions")
        if name == "train":  # the label set comes from the whole train split, also when a budget samples it
            train_labels = {str(field_value(r, target)) for r in records if field_value(r, target) is not None}
        splits[name] = extract(_sample(records, limit, config.seed), task, target, str(split_dir / name))
    if task.kind == "regression":
        return split_dir, splits, None
    label_names = sorted(train_labels)
    if len(label_names) < 2:
        raise DataError(f"the train split of '{data}' has fewer than 2 distinct '{target}' values: {label_names}",
                        fix="classification needs at least two labels")
    for name in ("dev", "test"):
        unseen = sorted(set(splits[name][2]) - set(label_names))
        if unseen:
            raise DataError(f"the {name} split of '{data}' has labels never seen in training: {unseen[:5]}",
                            fix="use a stratified split (the default) or drop those records")
    return split_dir, splits, label_names


def finetune(config: FinetuneConfig, *, verbose: int = 1,
             callbacks: tuple[tf.keras.callbacks.Callback, ...] = ()) -> dict:
    """Trains, keeps the best-on-dev weights, evaluates on test and saves `<run_dir>/model`. Returns the report.
    An interrupted run with the same config resumes from its last finished epoch (`resume=False` starts over).
    The global precision policy is restored afterwards: what runs next in the process (an export) builds float32."""
    previous_policy = tf.keras.mixed_precision.global_policy().name
    try:
        return _finetune(config, verbose=verbose, callbacks=callbacks)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)


def _finetune(config: FinetuneConfig, *, verbose: int,
              callbacks: tuple[tf.keras.callbacks.Callback, ...]) -> dict:
    from tensorboard.plugins.hparams import api as hparams
    from transformers import BertConfig, BertTokenizerFast, TFBertForSequenceClassification

    started = time.time()
    task = get_task(config.task)
    split_cpu(config.logical_cpus)
    config = dataclasses.replace(config, epochs=config.epochs or task.epochs,
                                 learning_rate=config.learning_rate or task.learning_rate,
                                 precision=set_precision(config.precision))  # auto → what this machine runs best
    classification = task.kind == "classification"
    tf.keras.utils.set_random_seed(config.seed)
    split_dir, splits, label_names = load_task_data(config, task)
    model_dir = resolve_model_dir(config.model)
    tokenizer = BertTokenizerFast.from_pretrained(model_dir)
    encoded = {name: tokenizer(texts, pairs, truncation=True, max_length=config.max_length)
               for name, (texts, pairs, _) in splits.items()}
    if classification:
        index = {name: i for i, name in enumerate(label_names)}
        targets = {name: np.array([index[t] for t in split[2]], np.int32) for name, split in splits.items()}
        scale = None
    else:
        raw = {name: np.array(split[2], np.float32) for name, split in splits.items()}
        scale = {"mean": float(raw["train"].mean()), "std": float(raw["train"].std() or 1.0)}
        targets = {name: ((v - scale["mean"]) / scale["std"]).astype(np.float32) for name, v in raw.items()}

    strategy = pick_strategy(config.strategy)
    steps_per_epoch = math.ceil(len(targets["train"]) / config.batch_size)
    with strategy.scope():
        kwargs = ({"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                   "label2id": index} if classification
                  else {"num_labels": 1, "problem_type": "regression"})
        if config.init == "random":  # the baseline a pretrained checkpoint has to beat
            model = TFBertForSequenceClassification(BertConfig.from_pretrained(model_dir, **kwargs))
            model(model.dummy_inputs, training=False)
        else:
            model = TFBertForSequenceClassification.from_pretrained(model_dir, **kwargs)
        metrics = [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")] if classification else []
        model.compile(optimizer=build_optimizer(config, steps_per_epoch * config.epochs,
                                                model.config.num_hidden_layers),
                      loss=Float32Loss(classification=classification), metrics=metrics)

    def evaluate(name: str, brief: bool, outputs: np.ndarray | None = None) -> dict:
        outputs = predict_outputs(model, encoded[name]) if outputs is None else outputs
        if classification:
            return metrics_lib.classification_metrics(outputs, targets[name], label_names, brief=brief)
        return metrics_lib.regression_metrics(outputs[:, 0] * scale["std"] + scale["mean"], raw[name], brief=brief)

    run_dir = Path(config.run_dir)
    logger = EvalAndLog(run_dir=run_dir, every=config.log_every, evaluate=lambda: evaluate("dev", True),
                        patience=config.patience, classification=classification)
    checkpoints = run_dir / "checkpoints"
    fingerprint = config_fingerprint(config)
    if not config.resume and checkpoints.exists():
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    resumed = restore_checkpoint(checkpoints, model, logger, fingerprint)
    first_epoch = resumed["epoch"] if resumed else 0
    previous_seconds = resumed["train_seconds"] if resumed else 0.0
    if resumed and verbose:
        print(f"resuming {run_dir} after epoch {first_epoch} (best dev score {resumed['best']['score']:.4f})")
    class_weight = None
    if classification and config.class_weights == "balanced":
        counts = np.bincount(targets["train"], minlength=len(label_names))
        class_weight = {i: float(len(targets["train"]) / (len(label_names) * max(c, 1))) for i, c in enumerate(counts)}
    train_started = time.time()

    def train_clock() -> float:  # dev evaluation is reported apart
        return round(previous_seconds + time.time() - train_started - logger.eval_seconds, 1)

    if not (resumed and resumed["stopped"]):
        model.fit(train_dataset(encoded["train"], targets["train"], config.batch_size, config.seed, first_epoch),
                  epochs=config.epochs, initial_epoch=first_epoch, steps_per_epoch=steps_per_epoch, verbose=verbose,
                  callbacks=[logger, EpochCheckpoint(directory=checkpoints, fingerprint=fingerprint, logger=logger,
                                                     train_clock=train_clock), *callbacks],
                  class_weight=class_weight)
    train_seconds = train_clock()
    model.set_weights(logger.best_weights)

    test_outputs = predict_outputs(model, encoded["test"])
    test = evaluate("test", False, test_outputs)
    hparam_values = {"task": config.task, "learning_rate": config.learning_rate, "epochs": config.epochs,
                     "batch_size": config.batch_size, "max_length": config.max_length,
                     "precision": config.precision, "replicas": strategy.num_replicas_in_sync}
    with logger.eval_writer.as_default(step=logger.step):
        tf.summary.scalar("test_score", test["score"])
        tf.summary.scalar("dev_score", logger.best["score"])
        hparams.hparams(hparam_values, trial_id=run_dir.name)
        if classification:
            tf.summary.scalar("test_accuracy", test["accuracy"])
            tf.summary.image("test_confusion_matrix", metrics_lib.confusion_image(
                np.array(test["confusion_matrix"]["rows_true_cols_predicted"])))
    logger.eval_writer.close()
    logger.train_writer.close()

    saved = run_dir / "model"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    (saved / "moat_task.json").write_text(json.dumps({
        "task": task.kind, "name": config.task, "labels": label_names, "target_scale": scale,
        "max_length": config.max_length, "text_pair": splits["train"][1] is not None,
        "lower_case": bool(getattr(tokenizer, "do_lower_case", True))}, indent=2))
    if not classification:
        test_outputs = test_outputs * scale["std"] + scale["mean"]
    metrics_lib.write_predictions(run_dir / "test_predictions.jsonl", splits["test"][0], test_outputs,
                                  raw["test"] if not classification else targets["test"], label_names)
    report = {"config": dataclasses.asdict(config), "task": dataclasses.asdict(task), "model_dir": str(model_dir),
              "split_dir": str(split_dir), "sizes": {name: len(t) for name, t in targets.items()},
              "labels": label_names, "replicas": strategy.num_replicas_in_sync,
              "resumed_after_epoch": first_epoch or None,
              "dev_history": logger.history, "best_dev": logger.best, "test": test,
              "timings": {"train_seconds": round(train_seconds, 1), "dev_eval_seconds": round(logger.eval_seconds, 1),
                          "total_seconds": round(time.time() - started, 1),
                          "epochs_run": len(logger.history),
                          "optimizer_steps": int(model.optimizer.iterations.numpy()),
                          "train_examples_per_second": round(
                              len(targets["train"]) * len(logger.history) / train_seconds, 1)},
              "saved_model_dir": str(saved), "tensorboard": f"tensorboard --logdir {run_dir}"}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(checkpoints)  # the run finished: its model is saved; optimizer state is ~3x the model size
    return report
