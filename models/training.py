"""Training-run state shared by the trainers (models/finetune.py, models/pretrain.py, models/seq2seq/train.py): the
config fingerprint that ties a checkpoint dir to the run that wrote it (or, for seq2seq, the config keys a resumed
run must keep), the resumable state file beside the checkpoints, and AdamW with the weight-decay exclusions."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

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
