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

The loop itself (steps, schedule, checkpoints, evaluation) is models/pretrain_loop.py.

Run dir: train/ (TensorBoard), checkpoints/ (+ state.json), report.json, pretrained/ (HF BERT dir + vocab.txt that
`moat finetune --set model=RUN_DIR/pretrained` loads).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ConfigError, DataError
from moatkit.data.pretraining import pretraining_dataset, read_examples_manifest, read_vocab
from moatkit.models.bert import BertConfig, BertPretrainer, load_hf_pretrained, save_hf_pretrained
from moatkit.models.distribute import Precision, pick_strategy, set_precision, split_cpu
from moatkit.models.pretrain_loop import (BudgetedWarmupDecay, Progress, RunCheckpoints, baseline_accuracy, evaluate,
                                          make_steps, train, unigram_baseline)
from moatkit.models.tasks import get_task
from moatkit.models.training import adamw, config_fingerprint, prepare_checkpoint_dir
from moatkit.models.transfer import TransferConfig, add_transfer_to_report

# what a resumed run may change (logging, evaluation, where it runs); anything else makes its checkpoints another run's
_NOT_FINGERPRINTED = ("resume", "progress", "log_every", "histogram_every", "checkpoint_every", "eval_examples",
                      "eval_data", "run_dir", "transfer")


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
    optimizer = adamw(learning_rate=schedule, weight_decay=config.weight_decay, epsilon=config.adam_epsilon)
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


# === Training ===

def pretrain(config: PretrainConfig) -> dict:
    """Pretrains (or resumes), evaluates, saves `<run_dir>/pretrained` and writes report.json; returns the report.
    On a non-chief worker of a multi-worker cluster returns {"worker": index} after training."""
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
        report = _pretrain(config, strategy, files, manifest, eval_pattern, vocab_source, started)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)
        if not generator_was_on:
            tf.keras.backend.experimental.disable_tf_random_generator()
    if config.transfer.task and "worker" not in report:
        report = add_transfer_to_report(config.run_dir, config.transfer)
    return report


def _pretrain(config: PretrainConfig, strategy, files: list[str], manifest: dict, eval_pattern: str,
              vocab_source: Path, started: float) -> dict:
    chief, worker, workers = _cluster_role(strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % (replicas * config.accumulation_steps):
        raise ConfigError(f"batch_size={config.batch_size} does not split into {replicas} replica(s) x "
                          f"{config.accumulation_steps} micro-batch(es)",
                          fix=f"use a multiple of {replicas * config.accumulation_steps}")
    model, bert_config, schedule, optimizer = _build_model(config, manifest=manifest, strategy=strategy)
    iterator = iter(pretraining_dataset(config.data, config.batch_size, seed=config.seed, repeat=True,
                                        shuffle_buffer=config.shuffle_buffer))
    run_dir = Path(config.run_dir)
    checkpoints = RunCheckpoints(
        checkpoint=tf.train.Checkpoint(model=model, optimizer=optimizer, data=iterator, rng=_rng_generators(model),
                                       total_steps=schedule.total_steps, warmup_steps=schedule.warmup_steps),
        directory=run_dir / "checkpoints", fingerprint=config_fingerprint(config, ignore=_NOT_FINGERPRINTED),
        chief=chief, worker=worker)
    progress = _resume_or_start(config, checkpoints=checkpoints, schedule=schedule)
    first_step = progress.step

    train_step, eval_step = make_steps(model=model, optimizer=optimizer, strategy=strategy, config=config)
    writer = tf.summary.create_file_writer(str(run_dir / "train")) if chief else None
    train(config=config, model=model, optimizer=optimizer, schedule=schedule, strategy=strategy,
          train_step=train_step, iterator=iterator, progress=progress, checkpoints=checkpoints, writer=writer)
    train_seconds = progress.train_seconds()

    result = evaluate(eval_step, eval_pattern, batch_size=config.batch_size, examples=config.eval_examples,
                      seed=config.seed)
    if not chief:
        return {"worker": worker, "step": progress.step}
    baseline = _add_unigram_baseline(result, config=config, files=files, eval_pattern=eval_pattern)
    with writer.as_default(step=progress.step):
        for key in ("loss", "mlm_accuracy", "sentence_accuracy", "unigram_baseline_mlm_accuracy"):
            if key in result:
                tf.summary.scalar(f"eval/{key}", result[key])
    writer.close()

    pretrained = run_dir / "pretrained"
    _save_pretrained(pretrained, model=model, bert_config=bert_config, vocab_source=vocab_source,
                     lower_case=manifest.get("lower_case", True))
    report = {
        "config": dataclasses.asdict(config), "model": dataclasses.asdict(bert_config),
        "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "strategy": strategy_name(strategy), "replicas": replicas, "workers": workers,
        "data": {"files": len(files), "examples": manifest["examples"], "max_length": manifest["max_length"],
                 "max_predictions": manifest["max_predictions"], "masking": manifest["masking"],
                 "pair_task": manifest["pair_task"], "vocab_size": manifest["vocab_size"]},
        "steps": progress.step, "resumed_from_step": first_step or None,
        "examples_seen": progress.step * config.batch_size, "tokens_seen": int(progress.tokens_seen),
        "budget": progress.budget, "final_train": progress.history[-1] if progress.history else None,
        "history": progress.history, "eval": {"data": eval_pattern, **result}, "unigram_baseline": baseline,
        "timings": {"train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - started, 1),
                    "tokens_per_second": round(progress.tokens_seen / max(train_seconds, 1e-9), 1)},
        "pretrained_dir": str(pretrained), "tensorboard": f"tensorboard --logdir {run_dir}",
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(checkpoints.directory, ignore_errors=True)  # pretrained/ holds the model; optimizer state is 2x more
    return report


def _build_model(config: PretrainConfig, *, manifest: dict, strategy):
    """(model, its BertConfig, schedule, optimizer), built in the strategy's scope: `init_from`'s weights or fresh."""
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
    return model, bert_config, schedule, optimizer


def _resume_or_start(config: PretrainConfig, *, checkpoints: RunCheckpoints,
                     schedule: BudgetedWarmupDecay) -> Progress:
    """The progress restored from the last checkpoint (with `resume`), else a fresh start: a run of `steps` steps,
    or one whose length calibration sets (`max_minutes`)."""
    if checkpoints.chief:
        prepare_checkpoint_dir(checkpoints.directory, resume=config.resume)
    progress = checkpoints.restore() if config.resume else None
    if progress is not None:
        return progress
    schedule.set_length(config.steps if config.max_minutes is None else 0, warmup_steps=config.warmup_steps,
                        warmup_ratio=config.warmup_ratio)
    return Progress()


def _add_unigram_baseline(result: dict, *, config: PretrainConfig, files: list[str], eval_pattern: str) -> dict:
    """Adds the accuracy of always predicting the training data's most frequent masked token to the evaluation
    `result`; returns that baseline."""
    vocab = read_vocab(Path(files[0]).parent / "vocab.txt")
    baseline = unigram_baseline(config.data, vocab_size=len(vocab), seed=config.seed)
    result["unigram_baseline_mlm_accuracy"] = baseline_accuracy(
        eval_pattern, baseline["token_id"], examples=result["examples"], seed=config.seed, batch_size=config.batch_size)
    return {"token": vocab[baseline["token_id"]], **baseline}


def _save_pretrained(directory: Path, *, model, bert_config: BertConfig, vocab_source: Path, lower_case: bool) -> None:
    """An HF BERT dir `moat finetune` loads; a bare vocab.txt gets a tokenizer_config.json saying how it was cased."""
    save_hf_pretrained(model, bert_config, directory, vocab_file=vocab_source)
    if not (directory / "tokenizer_config.json").is_file():
        (directory / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "BertTokenizer", "do_lower_case": lower_case}, indent=2))


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
