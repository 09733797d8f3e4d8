"""Fine-tune HF `TFBertForSequenceClassification` on a task's train split, select on dev, report on test.

Recipe: dynamic padding over length-grouped batches, AdamW with weight-decay exclusions, linear warm-up + decay,
gradient clipping, early stopping on dev with best-weights restore, seeds, optional class weights, mixed precision
and any distribution strategy (the model is built inside its scope). Regression (`num_labels=1`) trains on
standardised scores. TensorBoard: scalars in `<run_dir>/{train,eval}/`, HParams, the confusion matrix image.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ConfigError, ModelError
from moatkit.data.split import SplitConfig
from moatkit.models import metrics as metrics_lib
from moatkit.models.distribute import Precision, pick_strategy, set_precision, split_cpu
from moatkit.models.finetune_inputs import (TaskInputs, encode_task_inputs, load_task_data, predict_outputs,
                                           train_dataset)
from moatkit.models.schedules import WarmupLinearDecay
from moatkit.models.tasks import Task, get_task
from moatkit.models.training import EpochCheckpoint, EvalAndLog, adamw, config_fingerprint, resume_state

# what a resumed run may change; anything else (run_dir included) makes its checkpoints another run's
_NOT_FINGERPRINTED = ("resume", "log_every")


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


# === Training ===

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
    options = {}
    if config.ema_momentum:
        options.update(use_ema=True, ema_momentum=config.ema_momentum)
    if config.layer_decay < 1:
        options.update(optimizer_class=LayerwiseAdamW, layer_decay=config.layer_decay, num_layers=num_layers)
    return adamw(learning_rate=schedule, weight_decay=config.weight_decay, epsilon=1e-6,
                 global_clipnorm=config.clip_norm, **options)


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
    from transformers import BertTokenizerFast

    started = time.time()
    task = get_task(config.task)
    split_cpu(config.logical_cpus)
    config = dataclasses.replace(config, epochs=config.epochs or task.epochs,
                                 learning_rate=config.learning_rate or task.learning_rate,
                                 precision=set_precision(config.precision))  # auto → what this machine runs best
    tf.keras.utils.set_random_seed(config.seed)
    split_dir, splits, label_names = load_task_data(config, task)
    model_dir = resolve_model_dir(config.model)
    tokenizer = BertTokenizerFast.from_pretrained(model_dir)
    inputs = encode_task_inputs(split_dir, splits, label_names, tokenizer=tokenizer, max_length=config.max_length)

    strategy = pick_strategy(config.strategy)
    steps_per_epoch = math.ceil(len(inputs.targets["train"]) / config.batch_size)
    model = _build_model(config, model_dir=model_dir, inputs=inputs, strategy=strategy,
                         total_steps=steps_per_epoch * config.epochs)
    run_dir = Path(config.run_dir)
    logger = EvalAndLog(run_dir=run_dir, every=config.log_every, patience=config.patience,
                        evaluate=lambda: _evaluate(model, inputs, "dev", brief=True),
                        classification=inputs.classification)
    first_epoch, train_seconds = _train(config, model=model, inputs=inputs, logger=logger,
                                        steps_per_epoch=steps_per_epoch, verbose=verbose, callbacks=callbacks)
    model.set_weights(logger.best_weights)

    test_outputs = predict_outputs(model, inputs.encoded["test"])
    test = _evaluate(model, inputs, "test", brief=False, outputs=test_outputs)
    _log_test(logger, test, trial_id=run_dir.name, hparam_values={
        "task": config.task, "learning_rate": config.learning_rate, "epochs": config.epochs,
        "batch_size": config.batch_size, "max_length": config.max_length, "precision": config.precision,
        "replicas": strategy.num_replicas_in_sync})
    saved = run_dir / "model"
    _save_model(saved, model=model, tokenizer=tokenizer, task=task, config=config, inputs=inputs)
    _write_test_predictions(run_dir / "test_predictions.jsonl", inputs, test_outputs)
    report = {"config": dataclasses.asdict(config), "task": dataclasses.asdict(task), "model_dir": str(model_dir),
              "split_dir": str(split_dir), "sizes": {name: len(t) for name, t in inputs.targets.items()},
              "labels": label_names, "replicas": strategy.num_replicas_in_sync,
              "resumed_after_epoch": first_epoch or None,
              "dev_history": logger.history, "best_dev": logger.best, "test": test,
              "timings": {"train_seconds": round(train_seconds, 1), "dev_eval_seconds": round(logger.eval_seconds, 1),
                          "total_seconds": round(time.time() - started, 1),
                          "epochs_run": len(logger.history),
                          "optimizer_steps": int(model.optimizer.iterations.numpy()),
                          "train_examples_per_second": round(
                              len(inputs.targets["train"]) * len(logger.history) / train_seconds, 1)},
              "saved_model_dir": str(saved), "tensorboard": f"tensorboard --logdir {run_dir}"}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(run_dir / "checkpoints")  # finished: the model is saved; optimizer state is ~3x its size
    return report


def _build_model(config: FinetuneConfig, *, model_dir: Path, inputs: TaskInputs, strategy, total_steps: int):
    """The classifier (pretrained or fresh weights), compiled, built inside the strategy's scope."""
    from transformers import BertConfig, TFBertForSequenceClassification

    labels = inputs.label_names
    head = ({"num_labels": len(labels), "id2label": dict(enumerate(labels)),
             "label2id": {name: i for i, name in enumerate(labels)}} if inputs.classification
            else {"num_labels": 1, "problem_type": "regression"})
    with strategy.scope():
        if config.init == "random":  # the baseline a pretrained checkpoint has to beat
            model = TFBertForSequenceClassification(BertConfig.from_pretrained(model_dir, **head))
            model(model.dummy_inputs, training=False)
        else:
            # a classifier checkpoint with another label count (e.g. a 2-class model fine-tuned on TREC-6) keeps
            # its encoder and gets a fresh head; a same-shaped head (a warm start) is loaded as it is
            model = TFBertForSequenceClassification.from_pretrained(model_dir, ignore_mismatched_sizes=True, **head)
        metrics = [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")] if inputs.classification else []
        model.compile(optimizer=build_optimizer(config, total_steps, model.config.num_hidden_layers),
                      loss=Float32Loss(classification=inputs.classification), metrics=metrics)
    return model


def _evaluate(model, inputs: TaskInputs, split: str, *, brief: bool, outputs: np.ndarray | None = None) -> dict:
    outputs = predict_outputs(model, inputs.encoded[split]) if outputs is None else outputs
    if inputs.classification:
        return metrics_lib.classification_metrics(outputs, inputs.targets[split], inputs.label_names, brief=brief)
    return metrics_lib.regression_metrics(inputs.unscaled(outputs)[:, 0], inputs.scores[split], brief=brief)


def _train(config: FinetuneConfig, *, model, inputs: TaskInputs, logger: EvalAndLog, steps_per_epoch: int,
           verbose: int, callbacks: tuple[tf.keras.callbacks.Callback, ...]) -> tuple[int, float]:
    """Fits from the last finished epoch of an interrupted run with this config (or from the start). Returns the
    epochs resumed after and the training seconds, dev evaluation left out."""
    fingerprint = config_fingerprint(config, ignore=_NOT_FINGERPRINTED)
    checkpoints, resumed = resume_state(config.run_dir, model, logger, fingerprint=fingerprint, resume=config.resume)
    first_epoch = resumed["epoch"] if resumed else 0
    previous_seconds = resumed["train_seconds"] if resumed else 0.0
    if resumed and verbose:
        print(f"resuming {config.run_dir} after epoch {first_epoch} (best dev score {resumed['best']['score']:.4f})")
    class_weight = (_balanced_class_weight(inputs) if inputs.classification and config.class_weights == "balanced"
                    else None)
    train_started = time.time()

    def train_clock() -> float:
        return round(previous_seconds + time.time() - train_started - logger.eval_seconds, 1)

    if not (resumed and resumed["stopped"]):
        model.fit(train_dataset(inputs.encoded["train"], inputs.targets["train"], config.batch_size, config.seed,
                                first_epoch),
                  epochs=config.epochs, initial_epoch=first_epoch, steps_per_epoch=steps_per_epoch, verbose=verbose,
                  callbacks=[logger, EpochCheckpoint(directory=checkpoints, fingerprint=fingerprint, logger=logger,
                                                     train_clock=train_clock), *callbacks],
                  class_weight=class_weight)
    return first_epoch, train_clock()


def _balanced_class_weight(inputs: TaskInputs) -> dict[int, float]:
    """Class i weighs n / (classes · count_i) in the loss."""
    labels, classes = inputs.targets["train"], len(inputs.label_names)
    counts = np.bincount(labels, minlength=classes)
    return {i: float(len(labels) / (classes * max(c, 1))) for i, c in enumerate(counts)}


def _log_test(logger: EvalAndLog, test: dict, *, trial_id: str, hparam_values: dict) -> None:
    """Test and best-dev scores, the HParams and (classification) the confusion matrix; closes the writers."""
    from tensorboard.plugins.hparams import api as hparams

    with logger.eval_writer.as_default(step=logger.step):
        tf.summary.scalar("test_score", test["score"])
        tf.summary.scalar("dev_score", logger.best["score"])
        hparams.hparams(hparam_values, trial_id=trial_id)
        if logger.classification:
            tf.summary.scalar("test_accuracy", test["accuracy"])
            tf.summary.image("test_confusion_matrix", metrics_lib.confusion_image(
                np.array(test["confusion_matrix"]["rows_true_cols_predicted"])))
    logger.eval_writer.close()
    logger.train_writer.close()


def _save_model(directory: Path, *, model, tokenizer, task: Task, config: FinetuneConfig,
                inputs: TaskInputs) -> None:
    """An HF model dir (weights, tokenizer) with moat_task.json: what export and serving read."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "moat_task.json").write_text(json.dumps({
        "task": task.kind, "name": config.task, "labels": inputs.label_names, "target_scale": inputs.scale,
        "max_length": config.max_length, "text_pair": inputs.splits["train"][1] is not None,
        "lower_case": bool(getattr(tokenizer, "do_lower_case", True)),
        # where the dev split lives, so `moat export` can write the monitoring profile from it
        "split_dir": str(inputs.split_dir), "target": config.target or task.target}, indent=2))


def _write_test_predictions(path: Path, inputs: TaskInputs, outputs: np.ndarray) -> None:
    outputs, truth = ((outputs, inputs.targets["test"]) if inputs.classification
                      else (inputs.unscaled(outputs), inputs.scores["test"]))
    metrics_lib.write_predictions(path, inputs.splits["test"][0], outputs, truth, inputs.label_names)
