"""Magnitude pruning on TFMOT schedules (ConstantSparsity, PolynomialDecay), unstructured or 2:4, while fine-tuning.

Two paths to the same masks:
- HF TF-BERT (the fine-tuning stage's TFBertForSequenceClassification, the real baseline) is a subclassed model, and
  TFMOT's `prune_low_magnitude` rejects it. `ScheduledPruning`, a Keras callback, drives TFMOT's own masking engine
  (`pruning_impl.Pruning`, the object inside its `PruneLowMagnitude` wrapper) over the model's kernel variables: at
  the steps the schedule names it recomputes each mask (smallest magnitudes → 0, or 2 of every 4 inputs), and after
  every optimizer step it re-applies the masks, so a pruned weight stays exactly zero. Nothing is left to strip.
- Our encoder (models/layers implement `PrunableLayer`) goes through stock `prune_low_magnitude` → `strip_pruning`:
  `moat_classifier` rebuilds the HF classifier as a Functional graph of models/layers with the same weights.

Pruned: the Dense kernels inside the transformer blocks (q, k, v, attention output, FFN in and out) and, unless
`embeddings: false`, the word embeddings (unstructured only; TFMOT's 2:4 applies to Dense/Conv kernels). Kept dense:
position/type embeddings, LayerNorm, biases, pooler and classifier.
"""
from __future__ import annotations

import math


import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
# TFMOT's masking engine; its public API only reaches it through the wrapper, which needs a Functional model.
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_impl

from moatkit.data.core.errors import ConfigError, ModelError
from moatkit.models.compress.base import CompressContext, PruneSettings, Variant
from moatkit.models.compress.distill import DistillationLoss, predict_logits, teacher_dataset
from moatkit.models.compress.report import gzip_bytes

M_BY_N = (2, 4)


# === Which weights ===

def block_kernels(model) -> list[tf.Variable]:
    """The Dense kernels of an HF BERT's transformer blocks (6 per layer), in layer order."""
    kernels = [w for w in model.trainable_weights
               if "/encoder/layer_._" in w.name and w.name.rsplit("/", 1)[-1].startswith("kernel")]
    if not kernels:
        raise ModelError(f"found no transformer-block kernels in {type(model).__name__}",
                         fix="prune an HF BERT-family classifier written by `moat finetune`")
    return kernels


def word_embeddings(model) -> tf.Variable:
    return next(w for w in model.trainable_weights if "word_embeddings" in w.name)


def short_name(variable) -> str:
    """'tf_bert_for_sequence_classification/bert/encoder/layer_._0/attention/self/query/kernel:0' →
    'encoder/layer_._0/attention/self/query/kernel'."""
    name = variable.name.split(":")[0]
    for anchor in ("/encoder/", "/embeddings/"):
        if anchor in name:
            return anchor[1:] + name.split(anchor, 1)[1]
    return name


def _size(variable) -> int:
    return int(np.prod(variable.shape))


def sparsity_of(values: np.ndarray) -> float:
    return float(np.mean(np.asarray(values) == 0))


def m_by_n_holds(kernel: np.ndarray, m_by_n=M_BY_N) -> bool:
    """True when every group of n consecutive inputs of each output column has at least m zeros (TFMOT's layout:
    the kernel (in, out) is read as (out, in), groups run along `in`; a ragged last group counts its padding)."""
    zeros, n = m_by_n
    rows = np.asarray(kernel).T  # (out, in)
    pad = (-rows.shape[1]) % n
    groups = np.pad(rows, [(0, 0), (0, pad)]).reshape(rows.shape[0], -1, n)  # (out, in / n, n)
    return bool(((groups == 0).sum(-1) >= zeros).all())


# === HF path: TFMOT's masking engine driven from a callback ===

class ScheduledPruning(tf.keras.callbacks.Callback):
    """Prunes `variables` on a TFMOT `PruningSchedule` while `model.fit` trains. The step is the optimizer's
    iteration count (as TFMOT's UpdatePruningStep uses); 2:4 masks are set once, at step 1, as TFMOT does."""

    def __init__(self, *, variables: list[tf.Variable], schedule, m_by_n: tuple[int, int] | None = None):
        super().__init__()
        self.variables = list(variables)
        self.step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="pruning_step")
        self.masks = [tf.Variable(tf.ones_like(v), trainable=False, name="mask") for v in self.variables]
        thresholds = [tf.Variable(tf.zeros([], v.dtype), trainable=False, name="threshold") for v in self.variables]
        self.pruning = pruning_impl.Pruning(
            training_step_fn=lambda: self.step, pruning_vars=list(zip(self.variables, self.masks, thresholds)),
            pruning_schedule=schedule, block_size=(1, 1), block_pooling_type="AVG", sparsity_m_by_n=m_by_n)
        self._apply_masks = tf.function(self._apply)
        self._update_and_apply = tf.function(self._update)

    def _apply(self):
        self.pruning.weight_mask_op()

    def _update(self):
        with tf.control_dependencies([self.pruning.conditional_mask_update()]):
            self.pruning.weight_mask_op()

    def on_train_batch_begin(self, batch, logs=None):
        self.step.assign(tf.cast(self.model.optimizer.iterations, tf.int64))
        self._update_and_apply()

    def on_train_batch_end(self, batch, logs=None):
        self._apply_masks()  # the optimizer step just moved pruned weights off zero

    def on_train_end(self, logs=None):
        self._apply_masks()


def make_schedule(settings: PruneSettings, total_steps: int, sparsity: float | None = None):
    """ConstantSparsity from step 0, or PolynomialDecay 0 → target over the first ~2/3 of training (ending on an
    update step, so the last update applies the target exactly), leaving the rest to recover at full sparsity."""
    sparsity = settings.target_sparsity if sparsity is None else sparsity
    frequency = max(1, min(settings.frequency, total_steps // 4 or 1))
    if settings.schedule == "constant":
        return tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=frequency)
    updates = max(1, int(total_steps * 2 / 3) // frequency)
    return tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity,
                                                begin_step=0, end_step=updates * frequency, frequency=frequency)


def unseen_token_ids(context: CompressContext, vocab_size: int) -> np.ndarray:
    """Token ids absent from the train split's inputs: their embedding rows get no gradient from the task."""
    seen = np.zeros(vocab_size, bool)
    seen[np.unique(context.arrays["train"]["input_ids"])] = True
    return np.flatnonzero(~seen)


def block_and_embedding_sparsity(settings: PruneSettings, block_params: int, embedding_params: int
                                 ) -> tuple[float, float]:
    """Per-group targets: uniform, or with `embedding_sparsity` set, the block sparsity that keeps
    (zeros in blocks + zeros in embeddings) / (block + embedding params) at target_sparsity."""
    if settings.embedding_sparsity is None or not embedding_params:
        return settings.target_sparsity, settings.target_sparsity
    total = block_params + embedding_params
    blocks = (settings.target_sparsity * total - settings.embedding_sparsity * embedding_params) / block_params
    if not 0 < blocks < 1:
        raise ConfigError(f"prune.embedding_sparsity={settings.embedding_sparsity} leaves the transformer blocks a "
                          f"sparsity of {blocks:.3f} for an overall {settings.target_sparsity}",
                          fix="choose an embedding_sparsity closer to target_sparsity")
    return blocks, settings.embedding_sparsity


TEACHER_TEMPERATURE = 2.0  # when the uncompressed model teaches its compressed copy (teacher_alpha)


def fine_tune(model, context: CompressContext, settings, *, callbacks=(), verbose: int = 2) -> int:
    """models/finetune.py's recipe (AdamW with weight-decay exclusions, warm-up + linear decay, clipping, float32
    loss) on the context's train split; with `settings.teacher_alpha` > 0 the model's own logits from before this
    call are the teacher's soft targets (it is the uncompressed baseline then). Returns the number of optimizer
    steps."""
    from moatkit.models.finetune import FinetuneConfig, Float32Loss, build_optimizer

    steps_per_epoch = math.ceil(len(context.targets["train"]) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    if total == 0:
        return 0
    optimizer = build_optimizer(FinetuneConfig(learning_rate=settings.learning_rate), total)
    if settings.teacher_alpha > 0:
        arrays = context.arrays["train"]
        data = teacher_dataset(arrays, context.targets["train"], predict_logits(model, arrays),
                               batch_size=settings.batch_size, seed=context.config.seed)
        model.compile(optimizer=optimizer, loss=DistillationLoss(temperature=TEACHER_TEMPERATURE,
                                                                 alpha=settings.teacher_alpha))
    else:
        data = context.dataset("train", batch_size=settings.batch_size)
        model.compile(optimizer=optimizer, loss=Float32Loss(classification=True),
                      metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.fit(data, epochs=settings.epochs, callbacks=list(callbacks), verbose=verbose)
    return total


def prune_hf(model, context: CompressContext, settings: PruneSettings, *, structure: str,
             verbose: int = 2) -> dict:
    """Fine-tunes `model` in place while pruning it; returns what was pruned, to what sparsity, per variable."""
    steps_per_epoch = math.ceil(len(context.targets["train"]) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    if total < 2:
        raise ConfigError(f"pruning needs at least 2 training steps, the settings give {total}",
                          fix="raise prune.epochs or lower prune.batch_size")
    m_by_n = M_BY_N if structure == "2:4" else None
    blocks = block_kernels(model)
    embedding = word_embeddings(model) if structure == "unstructured" and settings.embeddings else None
    block_target, embedding_target = (0.5, None) if m_by_n else block_and_embedding_sparsity(
        settings, sum(_size(v) for v in blocks), _size(embedding) if embedding is not None else 0)
    callbacks = [ScheduledPruning(variables=blocks, schedule=make_schedule(settings, total, block_target),
                                  m_by_n=m_by_n)]
    targets = {short_name(v): block_target for v in blocks}
    unseen = None
    if embedding is not None:
        callbacks.append(ScheduledPruning(variables=[embedding],
                                          schedule=make_schedule(settings, total, embedding_target)))
        targets[short_name(embedding)] = embedding_target
        if settings.drop_unseen_tokens:
            unseen = unseen_token_ids(context, embedding.shape[0])
            if len(unseen) / embedding.shape[0] > embedding_target:
                raise ConfigError(f"prune.drop_unseen_tokens zeroes {len(unseen) / embedding.shape[0]:.1%} of the "
                                  f"word embeddings, more than their target sparsity {embedding_target}",
                                  fix="raise prune.embedding_sparsity, or set prune.drop_unseen_tokens=false")
            # Magnitude masks take exact zeros first, and AdamW keeps a row without gradient at zero.
            embedding.scatter_update(tf.IndexedSlices(tf.zeros([len(unseen), embedding.shape[1]]), unseen))
    fine_tune(model, context, settings, callbacks=callbacks, verbose=verbose)
    variables = blocks + ([embedding] if embedding is not None else [])
    per_variable = {short_name(v): round(sparsity_of(v.numpy()), 4) for v in variables}
    off = {name: s for name, s in per_variable.items() if abs(s - targets[name]) > 0.01}
    if off:  # should not happen with a schedule that ends on an update step: never report a wrong sparsity
        raise ModelError(f"pruning missed its targets on {sorted(off)[:3]}: {list(off.values())[:3]}",
                         fix="use more training steps or a smaller prune.frequency")
    # the allocation keeps the overall sparsity of the pruned weights at target_sparsity
    result = {"structure": structure, "schedule": settings.schedule,
              "target_sparsity": 0.5 if m_by_n else settings.target_sparsity,
              "block_sparsity": block_target, "embedding_sparsity": embedding_target,
              "steps": total, "epochs": settings.epochs, "learning_rate": settings.learning_rate,
              "teacher_alpha": settings.teacher_alpha, "per_variable_sparsity": per_variable,
              "pruned_params": sum(_size(v) for v in variables),
              "unseen_token_rows_zeroed": None if unseen is None else len(unseen)}
    if m_by_n:
        result["m_by_n_holds"] = all(m_by_n_holds(v.numpy()) for v in variables)
    return result


# === Our encoder: stock TFMOT ===

def moat_classifier(hf_model) -> tf.keras.Model:
    """The HF BERT classifier as a Functional graph of models/layers (same weights, same logits):
    {input_ids, attention_mask} (batch, seq) int32 → logits (batch, labels)."""
    from moatkit.models.checkpoints import bert_state_from_tf_model, encoder_kwargs_from_bert_config, \
        load_bert_weights
    from moatkit.models.transformer import Encoder

    config = hf_model.config
    encoder = Encoder(**encoder_kwargs_from_bert_config(config))
    load_bert_weights(encoder, bert_state_from_tf_model(hf_model))
    input_ids = tf.keras.Input([None], dtype=tf.int32, name="input_ids")
    attention_mask = tf.keras.Input([None], dtype=tf.int32, name="attention_mask")
    x = encoder.embedding(input_ids)  # (batch, seq, dim)
    for block in encoder.blocks:
        x = block(x, attention_mask=attention_mask)
    pooler = tf.keras.layers.Dense(config.hidden_size, activation="tanh", name="pooler")
    classifier = tf.keras.layers.Dense(config.num_labels, name="classifier")
    logits = classifier(pooler(x[:, 0]))  # (batch, labels), from the [CLS] position
    pooler.set_weights([w.numpy() for w in hf_model.bert.pooler.dense.weights])
    classifier.set_weights([w.numpy() for w in hf_model.classifier.weights])
    return tf.keras.Model({"input_ids": input_ids, "attention_mask": attention_mask}, logits)


def prune_keras_model(model: tf.keras.Model, schedule, *, m_by_n: tuple[int, int] | None = None) -> tf.keras.Model:
    """Wraps every PrunableLayer block (not embeddings, pooler or classifier) with stock `prune_low_magnitude`;
    the other layers are shared with `model`. Train with `tfmot.sparsity.keras.UpdatePruningStep()`, then
    `tfmot.sparsity.keras.strip_pruning`."""
    def wrap(layer):
        if isinstance(layer, tfmot.sparsity.keras.PrunableLayer):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule, sparsity_m_by_n=m_by_n)
        return layer

    return tf.keras.models.clone_model(model, clone_function=wrap)


# === The method ===

def reload_clean(hf_dir):
    """The saved model without the optimizer fit attached: a SavedModel of a compiled model would also hold the
    AdamW slots (twice the weights) and misstate the variant's size."""
    from transformers import TFAutoModelForSequenceClassification
    return TFAutoModelForSequenceClassification.from_pretrained(hf_dir)


def model_sparsity(model) -> float:
    """Exact zeros over all parameters (embeddings, LayerNorm and biases included)."""
    return round(float(sum(int(np.sum(w.numpy() == 0)) for w in model.weights) / model.count_params()), 4)


def variant_name(settings: PruneSettings, structure: str) -> str:
    return "prune-2of4" if structure == "2:4" else f"prune-{round(settings.target_sparsity * 100)}-{settings.schedule}"


def compress(context: CompressContext, settings: PruneSettings, *, verbose: int = 2) -> list[Variant]:
    """One variant per entry of `settings.structure`, each pruned from a fresh copy of the baseline."""
    settings.validate()
    baseline_weights = context.model_dir / "tf_model.h5"
    baseline_gzip = gzip_bytes(baseline_weights) if baseline_weights.is_file() else None
    variants = []
    for structure in settings.structure:
        model = context.load_baseline()
        result = prune_hf(model, context, settings, structure=structure, verbose=verbose)
        name = variant_name(settings, structure)
        hf_dir = context.save_hf(model, name)
        model = reload_clean(hf_dir)
        notes = {**result, "model_sparsity": model_sparsity(model),
                 "gzip_weights_bytes": gzip_bytes(hf_dir / "tf_model.h5"), "baseline_gzip_weights_bytes": baseline_gzip}
        # sparsity is left to the report (zeros over all kernels, the same measure for every variant)
        variants.append(Variant(name=name, method="prune", model=model, hf_dir=hf_dir,
                                params=int(model.count_params()), notes=notes))
    return variants
