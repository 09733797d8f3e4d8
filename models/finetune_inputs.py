"""Fine-tuning inputs: a task's splits, tokenized with the targets the model trains on, length-grouped training
batches with dynamic padding, and batched prediction in input order."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import DataError
from moatkit.data.dataset import field_value, read_records
from moatkit.data.split import ensure_splits
from moatkit.models.tasks import Task, extract


def _sample(records: list[dict], limit: int | None, seed: int) -> list[dict]:
    if limit is None or len(records) <= limit:
        return records
    return [records[i] for i in sorted(np.random.default_rng(seed).choice(len(records), limit, replace=False))]


def load_task_data(config, task: Task) -> tuple[Path, dict, list[str] | None]:
    """The split dir, {split: (texts, pairs, targets)} and the label names (None for regression) of `config` (a
    FinetuneConfig: its data, target, split, seed and example budgets)."""
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


@dataclasses.dataclass
class TaskInputs:
    """A task's splits, tokenized, with the targets the model trains on."""
    split_dir: Path
    splits: dict  # {split: (texts, pairs, targets)} as load_task_data read them
    label_names: list[str] | None  # None: regression
    encoded: dict  # {split: the tokenizer's output}
    targets: dict  # {split: class indices (int32) or standardised scores (float32)}
    scores: dict | None = None  # regression: {split: the scores as read}
    scale: dict | None = None  # regression: mean and std of the train scores

    @property
    def classification(self) -> bool:
        return self.label_names is not None

    def unscaled(self, outputs: np.ndarray) -> np.ndarray:
        """Regression outputs (N, 1) back in the scores' units."""
        return outputs * self.scale["std"] + self.scale["mean"]


def encode_task_inputs(split_dir: Path, splits: dict, label_names: list[str] | None, *, tokenizer,
                       max_length: int) -> TaskInputs:
    """Tokenizes every split; labels become class indices, regression scores are standardised by the train split's."""
    encoded = {name: tokenizer(texts, pairs, truncation=True, max_length=max_length)
               for name, (texts, pairs, _) in splits.items()}
    if label_names is not None:
        index = {name: i for i, name in enumerate(label_names)}
        targets = {name: np.array([index[t] for t in split[2]], np.int32) for name, split in splits.items()}
        return TaskInputs(split_dir=split_dir, splits=splits, label_names=label_names, encoded=encoded,
                          targets=targets)
    scores = {name: np.array(split[2], np.float32) for name, split in splits.items()}
    scale = {"mean": float(scores["train"].mean()), "std": float(scores["train"].std() or 1.0)}
    targets = {name: ((v - scale["mean"]) / scale["std"]).astype(np.float32) for name, v in scores.items()}
    return TaskInputs(split_dir=split_dir, splits=splits, label_names=None, encoded=encoded, targets=targets,
                      scores=scores, scale=scale)


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
