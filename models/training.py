"""Training-run state shared by the trainers (models/finetune.py, models/pretrain.py, models/seq2seq/train.py,
models/recommend/train.py): the config fingerprint that ties a checkpoint dir to the run that wrote it (or, for
seq2seq, the config keys a resumed run must keep), the resumable state file beside the checkpoints, AdamW with the
weight-decay exclusions, and the Keras fit callbacks (dev evaluation + TensorBoard + early stopping, epoch
checkpoints) with their restore."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ConfigError

# Patterns (re.search, case-sensitive) of the variable names AdamW does not decay: LayerNorm weights and biases, the
# BERT convention. "LayerNorm" matches Hugging Face BERT, "norm" moatkit's BERT (embedding/norm, *_norm, mlm_head/norm).
NO_DECAY = ("bias", "LayerNorm", "norm")

STATE_FILE = "state.json"


def config_fingerprint(config, *, ignore: Iterable[str] = ()) -> str:
    """A short hash of the dataclass `config` without the `ignore`d keys (those a resumed run may change)."""
    ignored = set(ignore)
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in ignored}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_checkpoint_dir(directory: Path, *, resume: bool) -> None:
    """Creates `directory`, emptied first unless the run may resume from it."""
    if not resume and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)


def write_state(directory: Path, state: dict, *, fingerprint: str) -> None:
    """Writes {"fingerprint", **state} to `directory`/state.json, atomically: a kill mid-write never leaves a torn
    state."""
    tmp = directory / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"fingerprint": fingerprint, **state}))
    tmp.replace(directory / STATE_FILE)


def read_state(directory: Path, *, fingerprint: str) -> dict | None:
    """The state an interrupted run left in `directory`, or None; a ConfigError when a run with another config (another
    fingerprint) wrote it."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    if state["fingerprint"] != fingerprint:
        raise ConfigError(f"'{directory}' holds checkpoints of a run with a different config",
                          fix="use another run_dir, or --set resume=false to start this one over")
    return state


def adamw(*, learning_rate, weight_decay: float, epsilon: float, exclude: Iterable[str] = NO_DECAY,
          optimizer_class: type[tf.keras.optimizers.AdamW] = tf.keras.optimizers.AdamW,
          **options) -> tf.keras.optimizers.AdamW:
    """`optimizer_class` (AdamW or a subclass, built with `options`) decaying the variables whose names match none of
    the `exclude` patterns."""
    optimizer = optimizer_class(learning_rate=learning_rate, weight_decay=weight_decay, epsilon=epsilon, **options)
    optimizer.exclude_from_weight_decay(var_names=list(exclude))
    return optimizer


def check_resume_keys(config, path: Path, keys: Iterable[str]) -> None:
    """Records the dataclass `config` in `path` on a new run; on a resumed one, a ConfigError naming the first of
    `keys` whose value differs from the recorded one (unlike a fingerprint, the message says what changed)."""
    current = dataclasses.asdict(config)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2))
        return
    saved = json.loads(path.read_text())
    for key in keys:
        if saved.get(key) != current[key]:
            raise ConfigError(f"run dir '{path.parent}' was started with {key}={saved.get(key)!r}, now "
                              f"{current[key]!r}", fix="use a new run_dir, or the original value to resume")


# === Callbacks shared by the Keras fit loops (fine-tuning, the sequential recommender) ===

class EvalAndLog(tf.keras.callbacks.Callback):
    """Train scalars every `every` steps; after each epoch, dev metrics, best weights and early stopping."""

    def __init__(self, *, run_dir: Path, every: int, evaluate, patience: int, classification: bool,
                 scalars: Iterable[str] = ("loss", "accuracy", "macro_f1", "pearson")):
        super().__init__()
        self.scalars = tuple(scalars)  # the keys of evaluate()'s result written as eval scalars, when present
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
            for name in self.scalars:
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
        write_state(self.directory, {
            "epoch": epoch + 1, "step": self.logger.step, "history": self.logger.history, "best": self.logger.best,
            "since_best": self.logger.since_best, "stopped": bool(self.model.stop_training),
            "train_seconds": self.train_clock()}, fingerprint=self.fingerprint)


def restore_checkpoint(directory: Path, model, logger: EvalAndLog, fingerprint: str) -> dict | None:
    """Restores an interrupted run's state into `model` and `logger`; returns the saved state or None."""
    state = read_state(directory, fingerprint=fingerprint)
    if state is None:
        return None
    model.optimizer.build(model.trainable_variables)  # slots must exist before their values are restored
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(
        tf.train.latest_checkpoint(str(directory))).assert_existing_objects_matched()
    with np.load(directory / "best_weights.npz") as saved:
        logger.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    logger.history, logger.best, logger.since_best, logger.step = (state["history"], state["best"],
                                                                   state["since_best"], state["step"])
    return state


def resume_state(run_dir: str | Path, model, logger: EvalAndLog, *, fingerprint: str,
                 resume: bool) -> tuple[Path, dict | None]:
    """`<run_dir>/checkpoints` (emptied unless `resume`) and the state of an interrupted run with this fingerprint,
    already restored into `model` and `logger`; None when there is none."""
    checkpoints = Path(run_dir) / "checkpoints"
    prepare_checkpoint_dir(checkpoints, resume=resume)
    return checkpoints, restore_checkpoint(checkpoints, model, logger, fingerprint)
