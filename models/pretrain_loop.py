"""The pretraining loop of models/pretrain.py: the schedule a time budget sizes, the train and eval steps (tf.functions
over the global batch), the step loop with its logging and checkpoints, and the final evaluation beside the unigram
baseline."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import DataError, ModelError
from moatkit.data.pretraining import pretraining_dataset
from moatkit.models.bert import pretraining_losses
from moatkit.models.training import read_state, write_state


# === Schedule ===

class BudgetedWarmupDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then linear decay to 0 at the last step (models.schedules.WarmupLinearDecay's
    shape) with the step counts in variables: a time-budgeted run learns its length only after timing its first
    steps, and a resumed run restores it from the checkpoint. Until the length is set the rate is 0."""

    def __init__(self, *, peak: float):
        super().__init__()
        self.peak = peak
        self.total_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="total_steps")
        self.warmup_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="warmup_steps")

    def set_length(self, total: int, *, warmup_steps: int | None, warmup_ratio: float) -> None:
        """`total` steps, the first `warmup_steps` (default: `warmup_ratio` of them) warming up; 0: not sized yet."""
        warm = warmup_steps if warmup_steps is not None else round(warmup_ratio * total)
        self.total_steps.assign(total)
        self.warmup_steps.assign(min(warm, total))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        total = tf.cast(self.total_steps, tf.float32)
        warm = tf.cast(self.warmup_steps, tf.float32)
        warmup = self.peak * step / tf.maximum(warm, 1.0)
        decay = self.peak * tf.clip_by_value((total - step) / tf.maximum(total - warm, 1.0), 0.0, 1.0)
        return tf.where(total > 0, tf.where(step < warm, warmup, decay), 0.0)

    def get_config(self):
        return {"peak": self.peak}


def fitting_steps(*, step: int, seconds_left: float, step_seconds: float, max_steps: int | None) -> int:
    """The run's total step count that spends `seconds_left` at `step_seconds` a step: at least one more step, at
    most `max_steps` (a run already there ends now)."""
    total = step + max(1, int(seconds_left / step_seconds))
    return total if max_steps is None else max(min(total, max_steps), step)


def _chief_decides(strategy, value: int, chief: bool) -> int:
    """One decision for the whole cluster: the chief's first replica's value (every other replica adds 0)."""
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.where(
        tf.distribute.get_replica_context().replica_id_in_sync_group == 0, float(value) if chief else 0.0, 0.0)),
        axis=None)
    return int(total.numpy())


# === Steps ===

def _slice_rows(features: dict, index, parts: int) -> dict:
    """Rows [index * n, (index + 1) * n) of every feature, n = batch / parts, with static shapes."""
    def take(t):
        return tf.reshape(t, [parts, -1, *t.shape[1:]])[index]  # (n, ...)
    return {k: take(v) for k, v in features.items()}


def _batch_stats(outputs: dict, features: dict, losses: dict) -> dict:
    """Sums that add up over micro-batches and replicas (losses are already divided by the global batch)."""
    weights = tf.cast(features["masked_lm_weights"], tf.float32)  # (B, P)
    hit = tf.cast(tf.equal(tf.argmax(outputs["mlm_logits"], -1, output_type=tf.int32), features["masked_lm_ids"]),
                  tf.float32)
    stats = {"loss": losses["loss"], "mlm_loss": losses["mlm"],
             "mlm_correct": tf.reduce_sum(hit * weights), "mlm_count": tf.reduce_sum(weights),
             "examples": tf.cast(tf.shape(weights)[0], tf.float32),
             "tokens": tf.reduce_sum(tf.cast(features["input_mask"], tf.float32))}
    if "sentence_logits" in outputs:
        guess = tf.argmax(outputs["sentence_logits"], -1, output_type=tf.int32)
        stats["sentence_loss"] = losses["sentence"]
        stats["sentence_correct"] = tf.reduce_sum(tf.cast(tf.equal(guess, features["next_sentence_labels"]),
                                                          tf.float32))
    return stats


def make_steps(*, model, optimizer, strategy, config):
    """(train_step(iterator) -> stats, eval_step(batch) -> stats), tf.functions over the global batch of `config` (a
    PretrainConfig: batch_size, accumulation_steps, clip_norm, xla)."""
    replicas = strategy.num_replicas_in_sync
    batch = config.batch_size
    k = config.accumulation_steps
    fp16 = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    variables = model.trainable_variables

    def micro_grads(features):
        with tf.GradientTape() as tape:
            outputs = model(features, training=True)
            losses = pretraining_losses(outputs, features, global_batch_size=batch)
            loss = optimizer.get_scaled_loss(losses["loss"]) if fp16 else losses["loss"]
        grads = tape.gradient(loss, variables)
        if fp16:
            grads = optimizer.get_unscaled_gradients(grads)
        # dense, so they add up and all-reduce (the tied embedding's gather gives IndexedSlices)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, variables)]
        return grads, _batch_stats(outputs, features, losses)

    if config.xla:
        micro_grads = tf.function(micro_grads, jit_compile=True)

    def replica_step(global_batch):
        context = tf.distribute.get_replica_context()
        rows = _slice_rows(global_batch, context.replica_id_in_sync_group, replicas)
        if k == 1:
            grads, stats = micro_grads(rows)
        else:
            micro = {name: tf.reshape(t, [k, -1, *t.shape[1:]]) for name, t in rows.items()}  # (k, b / k, ...)
            grads, stats = micro_grads({name: t[0] for name, t in micro.items()})
            for i in tf.range(1, k):
                more, more_stats = micro_grads({name: t[i] for name, t in micro.items()})
                grads = [a + b for a, b in zip(grads, more)]
                stats = {name: stats[name] + more_stats[name] for name in stats}
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        stats = context.all_reduce(tf.distribute.ReduceOp.SUM, stats)
        norm = tf.linalg.global_norm(grads)
        if config.clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, config.clip_norm, use_norm=norm)
        optimizer.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)
        return {**stats, "grad_norm": norm}

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(replica_step, args=(next(iterator),))
        # every replica holds the same all-reduced values
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], per_replica)

    def replica_eval(global_batch):
        context = tf.distribute.get_replica_context()
        rows = _slice_rows(global_batch, context.replica_id_in_sync_group, replicas)
        outputs = model(rows, training=False)
        stats = _batch_stats(outputs, rows, pretraining_losses(outputs, rows, global_batch_size=batch))
        return context.all_reduce(tf.distribute.ReduceOp.SUM, stats)

    @tf.function
    def eval_step(global_batch):
        per_replica = strategy.run(replica_eval, args=(global_batch,))
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], per_replica)

    return train_step, eval_step


def summarise(sums: dict, steps: int) -> dict:
    """Window sums of `_batch_stats` (+ grad_norm) → per-step means and accuracies."""
    out = {"loss": sums["loss"] / steps, "mlm_loss": sums["mlm_loss"] / steps,
           "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0)}
    if "sentence_loss" in sums:
        out["sentence_loss"] = sums["sentence_loss"] / steps
        out["sentence_accuracy"] = sums["sentence_correct"] / max(sums["examples"], 1.0)
    if "grad_norm" in sums:
        out["grad_norm"] = sums["grad_norm"] / steps
    return {key: round(float(value), 6) for key, value in out.items()}


# === Run state and checkpoints ===

@dataclasses.dataclass
class Progress:
    """How far the run has got: what state.json holds beside each checkpoint, so a resumed run goes on from there."""
    step: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)  # one row per log_every steps
    tokens_seen: float = 0.0
    budget: dict | None = None  # how a time-budgeted run sized its schedule
    earlier_seconds: float = 0.0  # training time of the processes before this one
    clock_started: float = 0.0  # when this process started training (start_clock)

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        return cls(step=state["step"], history=state["history"], tokens_seen=state["tokens_seen"],
                   budget=state.get("budget"), earlier_seconds=state["train_seconds"])

    def start_clock(self) -> None:
        self.clock_started = time.time()

    def train_seconds(self) -> float:
        return self.earlier_seconds + time.time() - self.clock_started

    def state(self) -> dict:
        return {"step": self.step, "history": self.history, "train_seconds": round(self.train_seconds(), 2),
                "tokens_seen": self.tokens_seen, "budget": self.budget}


@dataclasses.dataclass
class RunCheckpoints:
    """`checkpoint` (model, optimizer, data position, dropout RNG, schedule length) as `directory`/ckpt-STEP, with
    the run's Progress in state.json. Every worker takes part in a save (collectives); the chief's copy is kept."""
    checkpoint: tf.train.Checkpoint
    directory: Path
    fingerprint: str
    chief: bool
    worker: int

    def restore(self) -> Progress | None:
        state = read_state(self.directory, fingerprint=self.fingerprint)
        if state is None:
            return None
        prefix = self.directory / f"ckpt-{state['step']}"
        if not Path(str(prefix) + ".index").is_file():
            raise ModelError(f"'{self.directory / 'state.json'}' names step {state['step']} but '{prefix}.index' is "
                             "missing", fix="--set resume=false to start over")
        self.checkpoint.read(str(prefix)).assert_existing_objects_matched()  # read(): the counterpart of write()
        return Progress.from_state(state)

    def save(self, progress: Progress) -> None:
        if not self.chief:
            scratch = tempfile.mkdtemp(prefix=f"moat-worker{self.worker}-")
            self.checkpoint.write(os.path.join(scratch, "ckpt"))
            shutil.rmtree(scratch, ignore_errors=True)
            return
        self.checkpoint.write(str(self.directory / f"ckpt-{progress.step}"))
        write_state(self.directory, progress.state(), fingerprint=self.fingerprint)
        # only now is the previous checkpoint unreferenced: keep the newest two
        for old in sorted(self.directory.glob("ckpt-*.index"), key=lambda p: int(p.stem.split("-")[1]))[:-2]:
            for part in self.directory.glob(old.stem + ".*"):
                part.unlink()


# === Loop ===

class _Window:
    """Step stats summed since the last logged row."""

    def __init__(self):
        self.sums, self.steps, self.started = None, 0, time.time()

    def add(self, stats: dict) -> None:
        self.sums = stats if self.sums is None else {key: self.sums[key] + stats[key] for key in self.sums}
        self.steps += 1

    def row(self, step: int, *, learning_rate: float) -> dict:
        seconds = max(time.time() - self.started, 1e-9)
        return {"step": step, **summarise(self.sums, self.steps), "learning_rate": learning_rate,
                "tokens_per_second": round(self.sums["tokens"] / seconds, 1),
                "examples_per_second": round(self.sums["examples"] / seconds, 2)}


def train(*, config, model, optimizer, schedule: BudgetedWarmupDecay, strategy, train_step, iterator,
          progress: Progress, checkpoints: RunCheckpoints, writer) -> None:
    """Steps until the schedule's length (a time-budgeted run sizes it after `calibration_steps` timed steps at
    learning rate 0), with a row of stats every `log_every` steps and a checkpoint every `checkpoint_every`.
    `config`: the PretrainConfig; `writer`: the chief's TensorBoard writer (None on the other workers)."""
    from tqdm.auto import tqdm

    chief = checkpoints.chief
    total = int(schedule.total_steps.numpy())
    calibrating = total == 0
    bar = tqdm(total=total or None, initial=progress.step, disable=not (config.progress and chief), unit="step",
               dynamic_ncols=True)
    fp16 = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    window, first_step, calibration_started = _Window(), progress.step, None
    progress.start_clock()
    while calibrating or progress.step < total:
        stats = {key: float(value) for key, value in train_step(iterator).items()}
        progress.step += 1
        step = progress.step
        bar.update(1)
        progress.tokens_seen += stats["tokens"]
        window.add(stats)
        if step == first_step + 1:
            calibration_started = time.time()  # the first step traced the functions: time the ones after it
        if calibrating and step == first_step + 1 + config.calibration_steps:
            step_seconds = (time.time() - calibration_started) / config.calibration_steps
            total = _calibrate(config, schedule=schedule, strategy=strategy, progress=progress, chief=chief,
                               step_seconds=step_seconds)
            calibrating = False
            bar.total = total
            bar.refresh()
        elif (progress.budget and step < total and step % config.log_every == 0
              and step > progress.budget["calibrated_at_step"]):
            replanned = _replan(config, schedule=schedule, strategy=strategy, progress=progress, chief=chief,
                                total=total)
            if replanned != total:
                total = replanned
                bar.total = total
                bar.refresh()
        if step % config.log_every == 0 or (not calibrating and step == total):
            row = window.row(step, learning_rate=float(schedule(step - 1)))
            if fp16:
                row["loss_scale"] = float(optimizer.loss_scale)
            progress.history.append(row)
            if chief:
                _tensorboard_scalars(writer, step, row)
                if not config.progress:
                    print(json.dumps(row), flush=True)
            bar.set_postfix(loss=f"{row['loss']:.3f}", mlm_acc=f"{row['mlm_accuracy']:.3f}",
                            tok_s=f"{row['tokens_per_second']:.0f}")
            window = _Window()
        if chief and config.histogram_every and step % config.histogram_every == 0:
            with writer.as_default(step=step):
                for variable in model.trainable_variables:
                    tf.summary.histogram(variable.name.split(":")[0], variable)
        if step % config.checkpoint_every == 0 and (calibrating or step < total):
            checkpoints.save(progress)
    bar.close()


def _calibrate(config, *, schedule: BudgetedWarmupDecay, strategy, progress: Progress, chief: bool,
               step_seconds: float) -> int:
    """Sizes a time-budgeted run's schedule from the timed steps' pace; returns the run's step count."""
    step = progress.step
    estimate = fitting_steps(step=step, seconds_left=config.max_minutes * 60 - progress.train_seconds(),
                             step_seconds=step_seconds / 0.97, max_steps=config.steps)  # 3 %: logs, saves
    total = _chief_decides(strategy, estimate, chief)
    schedule.set_length(total, warmup_steps=config.warmup_steps, warmup_ratio=config.warmup_ratio)
    progress.budget = {"max_minutes": config.max_minutes, "calibrated_at_step": step,
                       "step_seconds": round(step_seconds, 4),
                       "seconds_at_calibration": round(progress.train_seconds(), 1),
                       "planned_seconds": round(progress.train_seconds() + (total - step) * step_seconds, 1),
                       "replans": []}
    return total


def _replan(config, *, schedule: BudgetedWarmupDecay, strategy, progress: Progress, chief: bool, total: int) -> int:
    """Steps often slow down after the timed ones (data, checkpoints, a busy machine): re-fits the plan to the pace
    since calibration, so the run still ends on its budget with the learning rate decayed. Returns the step count."""
    budget, step = progress.budget, progress.step
    pace = (progress.train_seconds() - budget["seconds_at_calibration"]) / (step - budget["calibrated_at_step"])
    estimate = fitting_steps(step=step, seconds_left=config.max_minutes * 60 - progress.train_seconds(),
                             step_seconds=pace, max_steps=config.steps)
    if abs(estimate - total) <= 0.01 * (total - step):
        estimate = total  # not worth a jump in the learning rate
    # every worker reaches this step and joins the collective; the chief's clock decides
    replanned = _chief_decides(strategy, estimate, chief)
    if replanned != total:
        schedule.total_steps.assign(replanned)  # the warm-up keeps its length: only the decay is re-sized
        budget["replans"] = (budget.get("replans", []) + [{"step": step, "steps": replanned}])[-20:]
    return replanned


def _tensorboard_scalars(writer, step: int, row: dict) -> None:
    with writer.as_default(step=step):
        for key, value in row.items():
            if key != "step":
                tf.summary.scalar(key, value)


# === Evaluation and baseline ===

def unigram_baseline(pattern: str, *, vocab_size: int, seed: int) -> dict:
    """Counts the masked target tokens of one pass over the data; the most frequent one, predicted always, is the
    baseline a pretrained model must beat."""
    counts = np.zeros(vocab_size, np.int64)
    examples = 0
    for batch in pretraining_dataset(pattern, 512, shuffle=False, seed=seed, drop_remainder=False).as_numpy_iterator():
        counts += np.bincount(batch["masked_lm_ids"][batch["masked_lm_weights"] > 0], minlength=vocab_size)
        examples += len(batch["masked_lm_ids"])
    if not counts.sum():
        raise DataError(f"'{pattern}' holds no masked tokens", fix="rebuild the examples with masking enabled")
    top = int(counts.argmax())
    return {"token_id": top, "accuracy": round(float(counts[top] / counts.sum()), 6),
            "masked_tokens": int(counts.sum()), "examples": examples}


def evaluate(eval_step, pattern: str, *, batch_size: int, examples: int, seed: int) -> dict:
    """The model without dropout on the first `examples` examples (whole global batches) of `pattern`."""
    batches = max(1, examples // batch_size)
    dataset = pretraining_dataset(pattern, batch_size, shuffle=False, seed=seed).take(batches)
    sums, steps = None, 0
    for batch in dataset:
        stats = {k: float(v) for k, v in eval_step(batch).items()}
        sums = stats if sums is None else {k: sums[k] + stats[k] for k in sums}
        steps += 1
    if not steps:
        raise DataError(f"'{pattern}' has fewer than batch_size={batch_size} examples to evaluate on",
                        fix="use more examples or a smaller batch_size")
    result = summarise(sums, steps)
    result.pop("grad_norm", None)
    return {"examples": int(sums["examples"]), **result}


def baseline_accuracy(pattern: str, token_id: int, *, examples: int, seed: int, batch_size: int) -> float:
    """Accuracy of always predicting `token_id` on the examples `evaluate` used."""
    hits = total = 0.0
    dataset = pretraining_dataset(pattern, batch_size, shuffle=False, seed=seed).take(max(1, examples // batch_size))
    for batch in dataset.as_numpy_iterator():
        weights = batch["masked_lm_weights"]
        hits += float(((batch["masked_lm_ids"] == token_id) * weights).sum())
        total += float(weights.sum())
    return round(hits / max(total, 1.0), 6)
