"""Shared pieces of `moat compress`: the config, the context every method receives, and the Variant it returns.

A method module (ptq, prune, cluster, qat, distill) exposes

    def compress(context: CompressContext, settings) -> list[Variant]

where `settings` is its nested dataclass of CompressConfig (e.g. `config.prune`). The context holds the baseline
(a `moat finetune` model dir), its tokenizer, and the task's train/dev/test splits encoded as fixed-width int32
arrays (the same test split the fine-tuning run reported on). report.py evaluates every Variant the same way:
accuracy/F1 on test, sizes, batch-1 latency and batch-32 throughput, and exports it into the model repository.

Every model in this package is called on token ids: `input_ids`, `attention_mask` (batch, seq) int32 → logits
(batch, labels) float32. Raw-string signatures (in-graph tokenizer) are added only when a variant is exported.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Literal


import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ConfigError, DataError, ModelError
from moatkit.data.split import SplitConfig

METHODS = ("ptq", "prune", "cluster", "qat", "distill")
INPUT_NAMES = ("input_ids", "attention_mask")
Batch = dict[str, np.ndarray]  # {"input_ids": (batch, seq) int32, "attention_mask": (batch, seq) int32}


# === Per-method settings (nested in CompressConfig: --set prune.target_sparsity=0.8) ===

@dataclasses.dataclass
class TuneSettings:
    """Fine-tuning while compressing (prune, cluster, QAT, distill)."""
    epochs: int = 2
    learning_rate: float = 3e-5
    batch_size: int = 32

    def validate(self):
        if self.epochs < 0 or self.learning_rate <= 0 or self.batch_size < 1:
            raise ConfigError(f"{type(self).__name__}: epochs >= 0, learning_rate > 0 and batch_size >= 1 needed, got "
                              f"{self.epochs}, {self.learning_rate}, {self.batch_size}", fix="e.g. --set prune.epochs=2")


@dataclasses.dataclass
class CompressTuneSettings(TuneSettings):
    """Fine-tuning a compressed copy of the baseline (prune, cluster, QAT)."""
    # > 0: the model's logits before compression (the baseline's) teach while compressing; the loss is
    # alpha · T² · KL to those soft targets (T = 2) + (1 − alpha) · cross-entropy on the labels
    teacher_alpha: float = 0.0

    def validate(self):
        super().validate()
        if not 0 <= self.teacher_alpha <= 1:
            raise ConfigError(f"{type(self).__name__}: teacher_alpha must be in [0, 1], got {self.teacher_alpha}",
                              fix="use a weight from 0 (labels only) to 1 (soft targets only), e.g. 0.5")


@dataclasses.dataclass
class PTQSettings:
    modes: list[str] = dataclasses.field(default_factory=lambda: ["float16", "dynamic", "int8"])
    representative_examples: int = 200  # train sentences that calibrate full-int8 activation ranges

    def validate(self):
        unknown = set(self.modes) - {"float16", "dynamic", "int8"}
        if unknown or not self.modes:
            raise ConfigError(f"config key 'ptq.modes' has unknown entries {sorted(unknown)}",
                              fix="choose from float16, dynamic, int8")
        if self.representative_examples < 1:
            raise ConfigError("config key 'ptq.representative_examples' must be >= 1")


@dataclasses.dataclass
class PruneSettings(CompressTuneSettings):
    target_sparsity: float = 0.8
    schedule: Literal["constant", "polynomial"] = "polynomial"
    structure: list[str] = dataclasses.field(default_factory=lambda: ["unstructured", "2:4"])
    frequency: int = 10  # optimizer steps between mask updates
    embeddings: bool = True  # also prune the word embeddings (unstructured): half of MiniLM's weights
    # None: every pruned tensor gets target_sparsity. A value: the word embeddings get it and the transformer blocks
    # whatever keeps the overall sparsity of the pruned weights at target_sparsity (the embeddings tolerate far more:
    # see docs/results.md, compression)
    embedding_sparsity: float | None = None
    # Vocabulary pruning first: zero the word-embedding rows of tokens that never occur in the train split (their
    # rows get no gradient from the task anyway; 60 % of MiniLM's 30,522 rows on MR), so magnitude pruning spends the
    # embedding sparsity there before it touches a token the task uses. Served, such a token embeds as zeros.
    drop_unseen_tokens: bool = False

    def validate(self):
        super().validate()
        if not 0 < self.target_sparsity < 1:
            raise ConfigError(f"config key 'prune.target_sparsity' must be in (0, 1), got {self.target_sparsity}")
        if self.embedding_sparsity is not None and not 0 < self.embedding_sparsity < 1:
            raise ConfigError(f"config key 'prune.embedding_sparsity' must be null or in (0, 1), got "
                              f"{self.embedding_sparsity}")
        unknown = set(self.structure) - {"unstructured", "2:4"}
        if unknown or not self.structure:
            raise ConfigError(f"config key 'prune.structure' has unknown entries {sorted(unknown)}",
                              fix="choose from unstructured, 2:4")


@dataclasses.dataclass
class ClusterSettings(CompressTuneSettings):
    clusters: int = 16
    centroid_init: Literal["kmeans_plus_plus", "linear", "density_based", "random"] = "kmeans_plus_plus"
    embeddings: bool = True  # also cluster the word embeddings
    epochs: int = 1

    def validate(self):
        super().validate()
        if self.clusters < 2:
            raise ConfigError(f"config key 'cluster.clusters' must be >= 2, got {self.clusters}")


@dataclasses.dataclass
class QATSettings(CompressTuneSettings):
    epochs: int = 1
    learning_rate: float = 1e-5


@dataclasses.dataclass
class DistillSettings(TuneSettings):
    student_layers: int = 3  # initialised from every other teacher layer
    student_hidden: int | None = None  # None: the teacher's width (then layers copy teacher weights)
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the soft-target loss; 1 - alpha for the hard labels
    unlabeled: str | None = None  # optional dataset dir / catalog name of in-domain text (soft targets only)
    max_unlabeled: int | None = 5000
    epochs: int = 3
    learning_rate: float = 1e-4

    def validate(self):
        super().validate()
        if self.student_layers < 1 or not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise ConfigError("distill needs student_layers >= 1, 0 <= alpha <= 1 and temperature > 0",
                              fix="e.g. --set distill.student_layers=3 --set distill.alpha=0.5")


@dataclasses.dataclass
class CompressConfig:
    model_dir: str = "runs/sentiment/model"  # a `moat finetune` run's model dir: the float32 baseline (teacher)
    # Data: by default the fine-tuning run's own (read from <run_dir>/report.json), so the test split is the same.
    task: str | None = None
    data: str | None = None
    target: str | None = None
    split: SplitConfig | None = None
    max_train_examples: int | None = None  # budget knobs for tests and demos
    max_eval_examples: int | None = None
    max_length: int | None = None  # default: the fine-tuning max_length; every input is padded to it
    methods: list[str] = dataclasses.field(default_factory=lambda: ["all"])
    out_dir: str = "runs/sentiment/compress"
    export: bool = True  # each variant into <repo>/<name>-<variant>/<version>/
    serve_check: bool = True  # then serve them all (REST + gRPC) from one moat-model-server and compare labels
    repo: str = "artifacts/models"
    name: str = "sentiment"
    seed: int = 13
    latency_repeats: int = 200  # timed batch-1 calls per variant (after warmup_calls untimed ones)
    throughput_batches: int = 10  # timed batch-32 calls per variant
    warmup_calls: int = 10
    num_threads: int | None = None  # TFLite interpreter threads; None = as many as TensorFlow uses (all cores)
    ptq: PTQSettings = dataclasses.field(default_factory=PTQSettings)
    prune: PruneSettings = dataclasses.field(default_factory=PruneSettings)
    cluster: ClusterSettings = dataclasses.field(default_factory=ClusterSettings)
    qat: QATSettings = dataclasses.field(default_factory=QATSettings)
    distill: DistillSettings = dataclasses.field(default_factory=DistillSettings)

    def validate(self):
        unknown = set(self.methods) - {"all", *METHODS}
        if unknown or not self.methods:
            raise ConfigError(f"config key 'methods' has unknown entries {sorted(unknown)}",
                              fix=f"choose all or any of {', '.join(METHODS)}")
        if self.max_length is not None and not 8 <= self.max_length <= 512:
            raise ConfigError(f"config key 'max_length' is {self.max_length}", fix="use 8..512")
        for name in ("latency_repeats", "throughput_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key '{name}' must be >= 1, got {getattr(self, name)}")
        if self.warmup_calls < 0:
            raise ConfigError(f"config key 'warmup_calls' must be >= 0, got {self.warmup_calls}")

    def selected_methods(self) -> list[str]:
        return list(METHODS) if "all" in self.methods else [m for m in METHODS if m in self.methods]


# === What a method returns ===

@dataclasses.dataclass
class Variant:
    """One compressed model. Give `model` (a Keras/HF model called as model(input_ids=, attention_mask=,
    training=False), returning logits or an object with `.logits`) and/or `tflite_path` (a flatbuffer whose
    serving_default takes input_ids, attention_mask); `predict` is derived from them when not given.

    The report saves `model` as a token-id SavedModel (its size and latency are those of that artifact) and exports
    it with raw-string signatures; a TFLite variant is exported next to the float32 baseline SavedModel with
    `serving_tflite` (raw strings in; see ptq.raw_string_tflite) as model.tflite, served with --prefer_tflite_model.
    """
    name: str  # unique in a report, e.g. "ptq-dynamic", "prune-80-unstructured"
    method: str  # one of METHODS, or "baseline"
    model: Any = None
    tflite_path: Path | None = None
    serving_tflite: bytes | Callable[[], bytes] | None = None  # raw-string flatbuffer for the repository (or a
    # function that converts it, called only when the variant is exported)
    hf_dir: Path | None = None  # when the model is an HF classifier saved with context.save_hf (exported as is)
    predict: Callable[[Batch], np.ndarray] | None = None
    params: int | None = None  # default: counted from `model`
    sparsity: float | None = None  # fraction of exact zeros over kernels (report.kernel_sparsity)
    notes: dict = dataclasses.field(default_factory=dict)  # anything method-specific (per-kernel sparsity, ...)


def logits_of(outputs) -> tf.Tensor:
    return tf.cast(getattr(outputs, "logits", outputs), tf.float32)


def token_id_function(model) -> Callable[[Batch], np.ndarray]:
    """A traced predict function for a Keras/HF model (one trace for any batch and width)."""
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec, spec], reduce_retracing=True)
    def call(input_ids, attention_mask):
        return logits_of(model(input_ids=input_ids, attention_mask=attention_mask, training=False))

    return lambda batch: call(tf.constant(batch["input_ids"]), tf.constant(batch["attention_mask"])).numpy()


# === The context every method receives ===

@dataclasses.dataclass
class CompressContext:
    config: CompressConfig
    model_dir: Path
    task: dict  # moat_task.json: labels, max_length, lower_case, ...
    labels: list[str]
    max_length: int
    tokenizer: Any  # transformers.BertTokenizerFast
    texts: dict[str, list[str]]  # split → sentences
    arrays: dict[str, Batch]  # split → input_ids/attention_mask (n, max_length) int32, padded with 0
    targets: dict[str, np.ndarray]  # split → label index (n,) int32
    out_dir: Path
    split_dir: Path | None = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def vocab(self) -> list[str]:
        return (self.model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()

    def load_baseline(self):
        """A fresh copy of the fine-tuned TFBertForSequenceClassification (each call loads new weights)."""
        from transformers import TFBertForSequenceClassification
        return TFBertForSequenceClassification.from_pretrained(self.model_dir)

    def method_dir(self, method: str) -> Path:
        path = self.out_dir / method
        path.mkdir(parents=True, exist_ok=True)
        return path

    def batch(self, split: str, index) -> Batch:
        return {name: self.arrays[split][name][index] for name in INPUT_NAMES}

    def dataset(self, split: str = "train", *, batch_size: int = 32, shuffle: bool = True,
                features: tuple[str, ...] = INPUT_NAMES) -> tf.data.Dataset:
        """(features dict, label) batches for Keras fit; shuffled with the config seed."""
        data = tf.data.Dataset.from_tensor_slices(({name: self.arrays[split][name] for name in features},
                                                   self.targets[split]))
        if shuffle:
            data = data.shuffle(len(self.targets[split]), seed=self.config.seed, reshuffle_each_iteration=True)
        return data.batch(batch_size).prefetch(2)

    def representative(self, count: int) -> list[Batch]:
        """`count` single-example train batches (seeded sample), e.g. for int8 calibration."""
        n = len(self.targets["train"])
        index = np.random.default_rng(self.config.seed).choice(n, min(count, n), replace=False)
        return [self.batch("train", slice(i, i + 1)) for i in sorted(index)]

    def save_hf(self, model, name: str) -> Path:
        """save_pretrained + tokenizer + moat_task.json, so serving/export.py can export the model as is."""
        path = self.method_dir("models") / name
        if path.exists():
            shutil.rmtree(path)
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / "moat_task.json").write_text(json.dumps({**self.task, "max_length": self.max_length}, indent=2))
        return path


def _finetune_data_config(config: CompressConfig, model_dir: Path, task_info: dict):
    """The FinetuneConfig whose splits the baseline saw: the run's report.json when it exists, then overrides."""
    from moatkit.data.core.config import from_dict
    from moatkit.models.finetune import FinetuneConfig

    report = model_dir.parent / "report.json"
    values = {}
    if report.is_file():
        saved = json.loads(report.read_text()).get("config", {})
        values = {k: saved[k] for k in ("task", "data", "target", "split", "seed") if k in saved}
    values.setdefault("task", task_info.get("name") or "classification")
    for key in ("task", "data", "target"):
        if getattr(config, key) is not None:
            values[key] = getattr(config, key)
    if config.split is not None:
        values["split"] = dataclasses.asdict(config.split)
    values.update(max_train_examples=config.max_train_examples, max_eval_examples=config.max_eval_examples)
    return from_dict(FinetuneConfig, values)


def encode(tokenizer, texts: list[str], max_length: int) -> Batch:
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {name: encoded[name].astype(np.int32) for name in INPUT_NAMES}


def load_context(config: CompressConfig) -> CompressContext:
    from transformers import BertTokenizerFast

    from moatkit.models.finetune import load_task_data
    from moatkit.models.tasks import get_task

    model_dir = Path(config.model_dir)
    task_file = model_dir / "moat_task.json"
    if not task_file.is_file() or not (model_dir / "config.json").is_file():
        raise ModelError(f"'{model_dir}' is not a fine-tuned moatkit model (needs config.json and moat_task.json)",
                         fix="pass the `model` dir of a `moat finetune` run, e.g. --set model_dir=runs/sentiment/model")
    task_info = json.loads(task_file.read_text())
    if task_info.get("task") != "classification":
        raise ConfigError(f"'{model_dir}' is a {task_info.get('task')} model; compression reports accuracy/F1",
                          fix="compress a classification run (e.g. mr-polarity, trec-6)")
    if task_info.get("text_pair"):
        raise ConfigError(f"'{model_dir}' was trained on text pairs", fix="compress a single-text classifier")
    finetune_config = _finetune_data_config(config, model_dir, task_info)
    task = get_task(finetune_config.task)
    split_dir, splits, _ = load_task_data(finetune_config, task)
    labels = list(task_info["labels"])
    index = {name: i for i, name in enumerate(labels)}
    targets = {}
    for name, (_, _, raw) in splits.items():
        unknown = sorted(set(raw) - set(index))
        if unknown:
            raise DataError(f"the {name} split has labels the baseline does not know: {unknown[:5]}",
                            fix="compress with the data the model was fine-tuned on")
        targets[name] = np.array([index[t] for t in raw], np.int32)
    max_length = config.max_length or int(task_info["max_length"])
    tokenizer = BertTokenizerFast.from_pretrained(model_dir)
    texts = {name: split[0] for name, split in splits.items()}
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(config.seed)
    return CompressContext(config=config, model_dir=model_dir, task=task_info, labels=labels, max_length=max_length,
                           tokenizer=tokenizer, texts=texts,
                           arrays={name: encode(tokenizer, t, max_length) for name, t in texts.items()},
                           targets=targets, out_dir=out_dir, split_dir=split_dir)
