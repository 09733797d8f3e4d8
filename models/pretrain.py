"""BERT pretraining (masked LM + next-sentence / sentence-order) on the TFRecords of `moat data pretraining-examples`.

One custom train step for every strategy: each replica takes its rows of the global batch, runs
`accumulation_steps` micro-batches and adds up the gradients of losses already divided by the global batch; the
replicas' sums are all-reduced, clipped by their global norm and applied by AdamW (LayerNorm parameters and biases
excluded from weight decay) under linear warm-up + decay. mixed_float16 wraps the optimizer in a LossScaleOptimizer
(a step with non-finite gradients is skipped and the scale lowered); `xla` compiles the forward/backward pass.

Data: every worker reads the same seeded stream of global batches and keeps its replicas' rows, so any strategy,
worker count or accumulation trains on exactly the batches one device would. The data position is that one tf.data
iterator; it is checkpointed with the model, the optimizer, the dropout RNG state and the schedule, so a killed run
resumes exactly where its last checkpoint left it.

Run dir: train/ (TensorBoard), checkpoints/ (+ state.json), report.json, pretrained/ (HF BERT dir + vocab.txt that
`moat finetune --set model=RUN_DIR/pretrained` loads).
"""
from __future__ import annotations


import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ConfigError, DataError, ModelError
from moatkit.data.pretraining import pretraining_dataset, read_examples_manifest, read_vocab
from moatkit.models.bert import BertConfig, BertPretrainer, load_hf_pretrained, pretraining_losses, save_hf_pretrained
from moatkit.models.distribute import Precision, pick_strategy, set_precision, split_cpu
from moatkit.models.tasks import get_task
from moatkit.models.transfer import TransferConfig, add_transfer_to_report

# substrings of variable names that AdamW does not decay (BERT: LayerNorm parameters and biases)
NO_DECAY = ["bias", "norm", "LayerNorm", "layer_norm"]


@dataclasses.dataclass
class PretrainConfig:
    data: str = ""  # examples dir (or a glob of its shards) written by `moat data pretraining-examples`
    eval_data: str | None = None  # held-out examples dir; default: the first eval_examples of `data`
    tokenizer: str | None = None  # tokenizer dir shipped in pretrained/; default: the one the examples were built with
    # architecture; vocab_size and sentence_head follow the examples (their vocab.txt and pair_task)
    model: BertConfig = dataclasses.field(default_factory=BertConfig)
    init_from: str | None = None  # HF BERT dir to continue pretraining from (its architecture replaces `model`)
    run_dir: str = "runs/pretrain"
    batch_size: int = 64  # global examples per optimizer step, over all replicas and micro-batches
    accumulation_steps: int = 1  # micro-batches per replica and step: same update, 1/k of the activation memory
    steps: int | None = 1000  # optimizer steps (with max_minutes: an upper bound)
    max_minutes: float | None = None  # training-time budget: steps are sized from the measured step time
    calibration_steps: int = 20  # budgeted runs: steps timed (learning rate 0) before the schedule is sized
    learning_rate: float = 1e-4  # peak
    warmup_ratio: float = 0.06  # of the steps, unless warmup_steps is set
    warmup_steps: int | None = None
    weight_decay: float = 0.01
    clip_norm: float | None = 1.0  # global gradient norm; null or 0: no clipping
    adam_epsilon: float = 1e-6
    precision: Precision = "float32"  # auto: see resolve_precision
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    logical_cpus: int = 0  # >1 splits the CPU into that many devices (multi-device runs without GPUs)
    xla: bool = False  # jit-compile the forward/backward pass
    checkpoint_every: int = 500
    log_every: int = 50
    histogram_every: int = 500  # weight histograms in TensorBoard; 0: never
    eval_examples: int = 2048  # final evaluation (no dropout) and the unigram baseline beside it
    shuffle_buffer: int = 10000
    seed: int = 12345
    resume: bool = True  # continue from run_dir/checkpoints (same config only)
    progress: bool = True  # tqdm progress bar (otherwise one log line per log_every steps)
    # after pretraining: fine-tune pretrained/ and the same architecture from random weights on transfer.task
    transfer: TransferConfig = dataclasses.field(default_factory=TransferConfig)

    def validate(self):
        if not self.data:
            raise ConfigError("config key 'data' is empty",
                              fix="--set data=DIR written by `moat data pretraining-examples`")
        for name in ("batch_size", "accumulation_steps", "calibration_steps", "checkpoint_every", "log_every",
                     "eval_examples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key '{name}' must be >= 1, got {getattr(self, name)}")
        if self.steps is None and self.max_minutes is None:
            raise ConfigError("neither 'steps' nor 'max_minutes' is set", fix="e.g. --set steps=1000 or "
                              "--set max_minutes=45")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"config key 'steps' must be >= 1 or null, got {self.steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"config key 'max_minutes' must be > 0 or null, got {self.max_minutes}")
        if self.batch_size % self.accumulation_steps:
            raise ConfigError(f"batch_size={self.batch_size} is not divisible by accumulation_steps="
                              f"{self.accumulation_steps}", fix="make batch_size a multiple of accumulation_steps")
        if self.learning_rate <= 0 or self.weight_decay < 0 or (self.clip_norm or 0) < 0:
            raise ConfigError("learning_rate must be > 0, weight_decay and clip_norm >= 0",
                              fix="e.g. --set learning_rate=1e-4 --set weight_decay=0.01 --set clip_norm=1.0")
        if not 0 <= self.warmup_ratio < 1 or (self.warmup_steps is not None and self.warmup_steps < 0):
            raise ConfigError("warmup_ratio must be in [0, 1) and warmup_steps >= 0",
                              fix="e.g. --set warmup_ratio=0.06")
        if self.histogram_every < 0:
            raise ConfigError(f"config key 'histogram_every' must be >= 0, got {self.histogram_every}")
        self.model.validate()
        if self.transfer.task:
            get_task(self.transfer.task)  # an unknown task fails now, not after the pretraining


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


# === Setup ===

def _cluster_role(strategy) -> tuple[bool, int, int]:
    """(is_chief, worker index, workers): worker 0 is the chief unless the cluster names one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0, 1
    spec = resolver.cluster_spec().as_dict()
    workers = sum(len(spec.get(kind, [])) for kind in ("chief", "worker"))
    index = (resolver.task_id or 0) + (len(spec.get("chief", [])) if resolver.task_type == "worker" else 0)
    chief = resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in spec)
    return chief, index, workers


def strategy_name(strategy) -> str:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"  # its class is named CollectiveAllReduceStrategy
    return "default" if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy() \
        else type(strategy).__name__


def resolve_model_config(config: PretrainConfig, manifest: dict) -> BertConfig:
    """The architecture: `config.model` with the examples' vocabulary size and sentence task."""
    vocab = manifest["vocab_size"]
    chosen = config.model.vocab_size
    if chosen not in (vocab, BertConfig.vocab_size):
        raise ConfigError(f"model.vocab_size={chosen} but the examples' vocab.txt has {vocab} tokens",
                          fix="leave model.vocab_size unset: it follows the examples")
    model = dataclasses.replace(config.model, vocab_size=vocab, sentence_head=manifest["pair_task"])
    if manifest["max_length"] > model.max_position_embeddings:
        raise ConfigError(f"the examples hold {manifest['max_length']} tokens per sequence, more than "
                          f"model.max_position_embeddings={model.max_position_embeddings}",
                          fix=f"--set model.max_position_embeddings={max(512, manifest['max_length'])}")
    return model.validate()


def build_optimizer(config: PretrainConfig, schedule) -> tf.keras.optimizers.Optimizer:
    # clipping happens in the train step, on the all-reduced gradients whose norm is also logged
    optimizer = tf.keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay,
                                          epsilon=config.adam_epsilon)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    if config.precision == "mixed_float16":
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def _rng_generators(model) -> list:
    """The dropout layers' tf.random.Generator objects: Keras does not checkpoint them; we do, so a resumed run
    draws the same dropout masks as an uninterrupted one."""
    found = []
    for layer in model.submodules:
        generator = getattr(getattr(layer, "_random_generator", None), "_generator", None)
        if generator is not None:
            found.append(generator)
    return found


def config_fingerprint(config: PretrainConfig) -> str:
    ignored = ("resume", "progress", "log_every", "histogram_every", "checkpoint_every", "eval_examples",
               "eval_data", "run_dir", "transfer")
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in ignored}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def make_steps(*, model, optimizer, strategy, config: PretrainConfig):
    """(train_step(iterator) -> stats, eval_step(batch) -> stats), tf.functions over the global batch."""
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


# === Checkpoints ===

def _save_state(directory: Path, state: dict) -> None:
    tmp = directory / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(directory / "state.json")  # atomic: a kill mid-write never leaves a torn state


def _restore(directory: Path, checkpoint: tf.train.Checkpoint, fingerprint: str) -> dict | None:
    state_file = directory / "state.json"
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    if state["fingerprint"] != fingerprint:
        raise ConfigError(f"'{directory}' holds checkpoints of a run with a different config",
                          fix="use another run_dir, or --set resume=false to start this one over")
    prefix = directory / f"ckpt-{state['step']}"
    if not Path(str(prefix) + ".index").is_file():
        raise ModelError(f"'{state_file}' names step {state['step']} but '{prefix}.index' is missing",
                         fix="--set resume=false to start over")
    checkpoint.read(str(prefix)).assert_existing_objects_matched()  # read(): the counterpart of write()
    return state


# === Training ===

def _tensorboard_scalars(writer, step: int, row: dict) -> None:
    with writer.as_default(step=step):
        for key, value in row.items():
            if key != "step":
                tf.summary.scalar(key, value)


def pretrain(config: PretrainConfig) -> dict:
    """Pretrains (or resumes), evaluates, saves `<run_dir>/pretrained` and writes report.json; returns the report.
    On a non-chief worker of a multi-worker cluster returns {"worker": index} after training."""
    from tqdm.auto import tqdm

    started = time.time()
    config.validate()
    files, manifest, _ = read_examples_manifest(config.data)
    eval_pattern = config.eval_data or config.data
    if config.eval_data:
        read_examples_manifest(config.eval_data)
    vocab_source = _tokenizer_source(config, files)  # checked now, not after hours of training
    split_cpu(config.logical_cpus)
    strategy = pick_strategy(config.strategy)  # first: MultiWorkerMirrored configures the runtime before its start
    previous_policy = tf.keras.mixed_precision.global_policy().name
    generator_was_on = tf.keras.backend.experimental.is_tf_random_generator_enabled()
    config = dataclasses.replace(config, precision=set_precision(config.precision))  # auto → the policy it picked
    tf.keras.backend.experimental.enable_tf_random_generator()  # dropout RNG as checkpointable state
    tf.keras.utils.set_random_seed(config.seed)
    try:
        report = _pretrain(config, strategy, files, manifest, eval_pattern, vocab_source, started, tqdm)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)
        if not generator_was_on:
            tf.keras.backend.experimental.disable_tf_random_generator()
    if config.transfer.task and "worker" not in report:
        report = add_transfer_to_report(config.run_dir, config.transfer)
    return report


def _pretrain(config: PretrainConfig, strategy, files: list[str], manifest: dict, eval_pattern: str,
              vocab_source: Path, started: float, tqdm) -> dict:
    chief, worker, workers = _cluster_role(strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % (replicas * config.accumulation_steps):
        raise ConfigError(f"batch_size={config.batch_size} does not split into {replicas} replica(s) x "
                          f"{config.accumulation_steps} micro-batch(es)",
                          fix=f"use a multiple of {replicas * config.accumulation_steps}")
    with strategy.scope():
        if config.init_from:
            model, bert_config = load_hf_pretrained(config.init_from, sentence_head=manifest["pair_task"])
            if bert_config.vocab_size != manifest["vocab_size"]:
                raise DataError(f"init_from '{config.init_from}' has a {bert_config.vocab_size}-token vocabulary, "
                                f"the examples {manifest['vocab_size']}",
                                fix="build the examples with the checkpoint's tokenizer (its vocab.txt)")
        else:
            bert_config = resolve_model_config(config, manifest)
            model = BertPretrainer(bert_config)
        model(model.dummy_inputs(), training=True)  # builds weights and the dropout generators in this scope
        schedule = BudgetedWarmupDecay(peak=config.learning_rate)
        optimizer = build_optimizer(config, schedule)
        optimizer.build(model.trainable_variables)  # slots exist before a checkpoint restores them

    dataset = pretraining_dataset(config.data, config.batch_size, seed=config.seed, repeat=True,
                                  shuffle_buffer=config.shuffle_buffer)
    iterator = iter(dataset)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, data=iterator, rng=_rng_generators(model),
                                     total_steps=schedule.total_steps, warmup_steps=schedule.warmup_steps)
    run_dir = Path(config.run_dir)
    checkpoints = run_dir / "checkpoints"
    fingerprint = config_fingerprint(config)
    if chief:
        if not config.resume and checkpoints.exists():
            shutil.rmtree(checkpoints)
        checkpoints.mkdir(parents=True, exist_ok=True)
    state = _restore(checkpoints, checkpoint, fingerprint) if config.resume else None
    step = state["step"] if state else 0
    history: list[dict] = state["history"] if state else []
    previous_seconds = state["train_seconds"] if state else 0.0
    tokens_seen = state["tokens_seen"] if state else 0.0
    budget = state.get("budget") if state else None  # how a time-budgeted run sized its schedule

    def set_length(total: int) -> None:
        warm = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_ratio * total)
        schedule.total_steps.assign(total)
        schedule.warmup_steps.assign(min(warm, total))

    if state is None:
        set_length(config.steps if config.max_minutes is None else 0)
    total = int(schedule.total_steps.numpy())
    calibrating = total == 0

    train_step, eval_step = make_steps(model=model, optimizer=optimizer, strategy=strategy, config=config)
    writer = tf.summary.create_file_writer(str(run_dir / "train")) if chief else None
    bar = tqdm(total=total or None, initial=step, disable=not (config.progress and chief), unit="step",
               dynamic_ncols=True)
    fp16 = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    window, window_steps = None, 0
    window_started = clock_started = time.time()
    calibration_started = None
    first_step = step

    def train_clock() -> float:
        return previous_seconds + time.time() - clock_started

    def save(step: int) -> None:
        if chief:
            checkpoint.write(str(checkpoints / f"ckpt-{step}"))
            _save_state(checkpoints, {"fingerprint": fingerprint, "step": step, "history": history,
                                      "train_seconds": round(train_clock(), 2), "tokens_seen": tokens_seen,
                                      "budget": budget})
            # only now is the previous checkpoint unreferenced: keep the newest two
            for old in sorted(checkpoints.glob("ckpt-*.index"), key=lambda p: int(p.stem.split("-")[1]))[:-2]:
                for part in checkpoints.glob(old.stem + ".*"):
                    part.unlink()
        else:  # every worker takes part in a save (collectives); the chief's copy is the one kept
            scratch = tempfile.mkdtemp(prefix=f"moat-worker{worker}-")
            checkpoint.write(os.path.join(scratch, "ckpt"))
            shutil.rmtree(scratch, ignore_errors=True)

    while calibrating or step < total:
        stats = {key: float(value) for key, value in train_step(iterator).items()}
        step += 1
        bar.update(1)
        tokens_seen += stats["tokens"]
        window = stats if window is None else {key: window[key] + stats[key] for key in window}
        window_steps += 1
        if step == first_step + 1:
            calibration_started = time.time()  # the first step traced the functions: time the ones after it
        if calibrating and step == first_step + 1 + config.calibration_steps:
            step_seconds = (time.time() - calibration_started) / config.calibration_steps
            estimate = fitting_steps(step=step, seconds_left=config.max_minutes * 60 - train_clock(),
                                     step_seconds=step_seconds / 0.97, max_steps=config.steps)  # 3 %: logs, saves
            total = _chief_decides(strategy, estimate, chief)
            set_length(total)
            calibrating = False
            budget = {"max_minutes": config.max_minutes, "calibrated_at_step": step,
                      "step_seconds": round(step_seconds, 4), "seconds_at_calibration": round(train_clock(), 1),
                      "planned_seconds": round(train_clock() + (total - step) * step_seconds, 1), "replans": []}
            bar.total = total
            bar.refresh()
        elif budget and step < total and step % config.log_every == 0 and step > budget["calibrated_at_step"]:
            # steps often slow down after the timed ones (data, checkpoints, a busy machine): re-fit the plan to
            # the pace since calibration, so the run still ends on its budget with the learning rate decayed
            pace = (train_clock() - budget["seconds_at_calibration"]) / (step - budget["calibrated_at_step"])
            estimate = fitting_steps(step=step, seconds_left=config.max_minutes * 60 - train_clock(),
                                     step_seconds=pace, max_steps=config.steps)
            if abs(estimate - total) <= 0.01 * (total - step):
                estimate = total  # not worth a jump in the learning rate
            # every worker reaches this step and joins the collective; the chief's clock decides
            replanned = _chief_decides(strategy, estimate, chief)
            if replanned != total:
                total = replanned
                schedule.total_steps.assign(total)  # the warm-up keeps its length: only the decay is re-sized
                budget["replans"] = (budget.get("replans", []) + [{"step": step, "steps": total}])[-20:]
                bar.total = total
                bar.refresh()
        if step % config.log_every == 0 or (not calibrating and step == total):
            seconds = time.time() - window_started
            row = {"step": step, **summarise(window, window_steps),
                   "learning_rate": float(schedule(step - 1)),
                   "tokens_per_second": round(window["tokens"] / max(seconds, 1e-9), 1),
                   "examples_per_second": round(window["examples"] / max(seconds, 1e-9), 2)}
            if fp16:
                row["loss_scale"] = float(optimizer.loss_scale)
            history.append(row)
            if chief:
                _tensorboard_scalars(writer, step, row)
                if not config.progress:
                    print(json.dumps(row), flush=True)
            bar.set_postfix(loss=f"{row['loss']:.3f}", mlm_acc=f"{row['mlm_accuracy']:.3f}",
                            tok_s=f"{row['tokens_per_second']:.0f}")
            window, window_steps, window_started = None, 0, time.time()
        if chief and config.histogram_every and step % config.histogram_every == 0:
            with writer.as_default(step=step):
                for variable in model.trainable_variables:
                    tf.summary.histogram(variable.name.split(":")[0], variable)
        if step % config.checkpoint_every == 0 and (calibrating or step < total):
            save(step)
    bar.close()
    train_seconds = train_clock()

    result = evaluate(eval_step, eval_pattern, batch_size=config.batch_size, examples=config.eval_examples,
                      seed=config.seed)
    if not chief:
        return {"worker": worker, "step": step}
    vocab = read_vocab(Path(files[0]).parent / "vocab.txt")
    baseline = unigram_baseline(config.data, vocab_size=len(vocab), seed=config.seed)
    eval_baseline = _baseline_on(eval_pattern, baseline["token_id"], examples=result["examples"],
                                 seed=config.seed, batch_size=config.batch_size)
    result["unigram_baseline_mlm_accuracy"] = eval_baseline
    with writer.as_default(step=step):
        for key in ("loss", "mlm_accuracy", "sentence_accuracy", "unigram_baseline_mlm_accuracy"):
            if key in result:
                tf.summary.scalar(f"eval/{key}", result[key])
    writer.close()

    pretrained = run_dir / "pretrained"
    save_hf_pretrained(model, bert_config, pretrained, vocab_file=vocab_source)
    if not (pretrained / "tokenizer_config.json").is_file():  # a bare vocab.txt: say how it was cased
        (pretrained / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "BertTokenizer", "do_lower_case": manifest.get("lower_case", True)}, indent=2))
    report = {
        "config": dataclasses.asdict(config), "model": dataclasses.asdict(bert_config),
        "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "strategy": strategy_name(strategy), "replicas": replicas, "workers": workers,
        "data": {"files": len(files), "examples": manifest["examples"], "max_length": manifest["max_length"],
                 "max_predictions": manifest["max_predictions"], "masking": manifest["masking"],
                 "pair_task": manifest["pair_task"], "vocab_size": manifest["vocab_size"]},
        "steps": step, "resumed_from_step": first_step or None,
        "examples_seen": step * config.batch_size, "tokens_seen": int(tokens_seen),
        "budget": budget, "final_train": history[-1] if history else None, "history": history,
        "eval": {"data": eval_pattern, **result},
        "unigram_baseline": {"token": vocab[baseline["token_id"]], **baseline},
        "timings": {"train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - started, 1),
                    "tokens_per_second": round(tokens_seen / max(train_seconds, 1e-9), 1)},
        "pretrained_dir": str(pretrained), "tensorboard": f"tensorboard --logdir {run_dir}",
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: pretrained/ holds the model, optimizer state is 2x more
    return report


def _baseline_on(pattern: str, token_id: int, *, examples: int, seed: int, batch_size: int) -> float:
    """Accuracy of always predicting `token_id` on the examples `evaluate` used."""
    hits = total = 0.0
    dataset = pretraining_dataset(pattern, batch_size, shuffle=False, seed=seed).take(max(1, examples // batch_size))
    for batch in dataset.as_numpy_iterator():
        weights = batch["masked_lm_weights"]
        hits += float(((batch["masked_lm_ids"] == token_id) * weights).sum())
        total += float(weights.sum())
    return round(hits / max(total, 1.0), 6)


def _tokenizer_source(config: PretrainConfig, files: list[str]) -> Path:
    """The tokenizer dir the examples were built with (its report says), else the examples' own vocab.txt."""
    if config.tokenizer:
        path = Path(config.tokenizer)
        vocab = path if path.is_file() and path.name == "vocab.txt" else path / "vocab.txt"
        if not vocab.is_file():
            raise DataError(f"tokenizer '{path}' has no vocab.txt", fix="pass the dir of `moat data tokenizer`")
        if vocab.read_text(encoding="utf-8") != (Path(files[0]).parent / "vocab.txt").read_text(encoding="utf-8"):
            raise DataError(f"tokenizer '{path}' is not the vocabulary the examples were built with",
                            fix="pass the tokenizer given to `moat data pretraining-examples` (or leave it unset)")
        return path
    root = Path(files[0]).parent
    try:
        built_with = Path(json.loads((root / "report.json").read_text())["tokenizer"])
        if (built_with / "vocab.txt").read_text(encoding="utf-8") == (root / "vocab.txt").read_text(encoding="utf-8"):
            return built_with
    except (OSError, KeyError, ValueError):
        pass
    return root / "vocab.txt"


# === Local multi-worker launcher ===

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local_workers(argv: list[str], *, workers: int, run_dir: str) -> int:
    """Runs `moat pretrain ARGV --set strategy=multi_worker` as `workers` local processes forming one
    MultiWorkerMirroredStrategy cluster (TF_CONFIG with 127.0.0.1 ports; worker 0 is the chief and prints the
    result; the others log to RUN_DIR/workers/worker-N.log). A failing worker stops the others. Returns the exit code.

    TensorFlow's gRPC servers listen on all interfaces: on a shared host run this inside a private network
    namespace (`unshare -n sh -c 'ip link set lo up; moat pretrain --workers 2 …'`)."""
    if workers < 2:
        raise ConfigError(f"--workers {workers}: a cluster needs at least 2", fix="omit --workers for one process")
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(workers)]
    logs = Path(run_dir) / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for index in range(workers):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                                      "task": {"type": "worker", "index": index}})}
        command = [sys.executable, "-m", "moatkit.app.cli", "pretrain", *argv, "--set", "strategy=multi_worker"]
        if index == 0:
            processes.append(subprocess.Popen(command, env=env))
        else:
            with open(logs / f"worker-{index}.log", "w") as log:
                processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    code = 0
    try:
        pending = list(processes)
        while pending:
            for process in list(pending):
                if process.poll() is None:
                    continue
                pending.remove(process)
                if process.returncode and not code:
                    code = process.returncode
                    for other in pending:
                        other.terminate()
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return code
