"""Quantization-aware training (TFMOT) of the fine-tuned classifier, converted to an int8 TFLite model.

TFMOT's `quantize_model` rejects the HF classifier (a subclassed model), int32 token inputs and attention, so:
1. `functional_classifier` rebuilds the baseline as a Functional graph of our layers, one node per role: the
   embedding, then per block attention → Add → LayerNorm → feed-forward → Add → LayerNorm, then BERT's tanh pooler
   and the classifier, all with the baseline's weights (logits equal to ≤ 1e-4). Attention and feed-forward are
   subclasses of ours whose Dense sublayers compute with one matmul (MatmulDense: see why there).
2. `quantize_classifier` annotates the nodes with the QuantizeConfigs below inside `quantize_scope` and runs
   `quantize_apply`:
   - attention: q/k/v/output kernels int8; the q/k/v projections and the attention-weighted values (the output
     projection's input) 8-bit; scores and softmax stay float.
   - feed-forward: both kernels int8; the intermediate activations 8-bit before and after GELU.
   - pooler, classifier: TFMOT's default Dense config.
   - embedding and LayerNorms compute in float; only their outputs are 8-bit, so every Dense reads int8.
   - the int32 ids and the mask feed no annotated layer, so TFMOT inserts no input quantizer.
   Kernels are symmetric per-tensor: per-channel fake quantization on Keras' tensordot Dense did not convert
   ("tfl.transpose op has mismatched quantized axes"; not retried since MatmulDense).
3. Fine-tunes briefly with the fake-quant ops in place (the pruning recipe, models.compress.prune.fine_tune).
4. Converts with the ranges learned in training (from the fake-quant ops; no representative dataset needed):
   int8 weights and activations around every Dense and in the residual adds; float embedding tables, LayerNorm
   statistics and softmax. The variant's notes give TFLite's agreement with the QAT graph on the dev split.
"""
from __future__ import annotations

import collections
from pathlib import Path


import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from moatkit.data.core.errors import ModelError
from moatkit.models.compress.base import INPUT_NAMES, Batch, CompressContext, QATSettings, Variant
from moatkit.models.layers import FeedForward, MultiHeadAttention
from moatkit.models.checkpoints import bert_state_from_tf_model, encoder_kwargs_from_bert_config, load_bert_weights
from moatkit.models.transformer import Encoder, TokenAndPositionEmbedding

quantize = tfmot.quantization.keras
PARITY_TOLERANCE = 1e-4


# === The Functional classifier ===

class MatmulDense(tf.keras.layers.Dense):
    """Dense whose product is one broadcasting matmul. Keras' Dense runs tensordot on (B, S, M) inputs, whose
    dynamic-shape reshapes sit between the product and the bias: after QAT, TFLite then cannot fuse the bias and
    keeps those FULLY_CONNECTED ops float (12 of 14 in the tiny model). A batch matmul with a constant kernel
    becomes one int8 FULLY_CONNECTED with the bias fused, at any batch size and length."""

    def call(self, inputs):
        outputs = tf.matmul(inputs, self.kernel)  # (B, S, M) x (M, N) → (B, S, N)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return self.activation(outputs)


class QuantizableAttention(MultiHeadAttention):
    """Our attention with MatmulDense projections and one hook: `context_activation`, applied to the
    attention-weighted values before the output projection. None (identity) in float; AttentionQuantizeConfig
    puts an 8-bit quantizer there."""

    dense_class = MatmulDense
    context_activation = None  # a class attribute, so Keras does not track what QAT assigns

    def _combine_heads(self, x):
        x = super()._combine_heads(x)  # (B, Q, H*D)
        return x if self.context_activation is None else self.context_activation(x)


class QuantizableFeedForward(FeedForward):
    dense_class = MatmulDense


class TokenIdClassifier(tf.Module):
    """Calls a Functional classifier with HF's convention, model(input_ids=, attention_mask=, training=) → logits,
    which the compression report, ptq.token_id_signature and the serving twin use."""

    def __init__(self, model: tf.keras.Model):
        super().__init__()
        self.model = model

    def __call__(self, *, input_ids, attention_mask, training=False):
        return self.model({"input_ids": input_ids, "attention_mask": attention_mask}, training=training)

    def count_params(self) -> int:
        return int(self.model.count_params())


def _renamed(layer: tf.keras.layers.Layer, name: str, cls=None, **overrides) -> tf.keras.layers.Layer:
    """A fresh layer with `layer`'s config under a model-unique name (the encoder reuses names across blocks)."""
    return (cls or type(layer)).from_config({**layer.get_config(), **overrides, "name": name})


def functional_classifier(hf_model) -> tf.keras.Model:
    """HF TFBertForSequenceClassification → Functional model with the same weights:
    {input_ids, attention_mask} (batch, seq) int32 → logits (batch, labels) float32."""
    config = hf_model.config
    encoder = Encoder(**encoder_kwargs_from_bert_config(config))
    load_bert_weights(encoder, bert_state_from_tf_model(hf_model))  # maps embeddings and blocks, tested vs HF
    copies = []  # (new layer, layer whose weights it takes)

    def node(source, name, cls=None, **overrides):
        layer = _renamed(source, name, cls, **overrides)
        copies.append((layer, source))
        return layer

    input_ids = tf.keras.Input([None], dtype=tf.int32, name="input_ids")
    attention_mask = tf.keras.Input([None], dtype=tf.int32, name="attention_mask")
    mask = tf.cast(tf.expand_dims(attention_mask, 1), tf.bool)  # (B, 1, S); expand before the cast: TFLite has
    # no kernel for slicing bools
    x = node(encoder.embedding, "embedding")(input_ids)  # (B, S, M)
    # identity in float; QAT quantizes the embedding output here (annotating the embedding itself would make
    # TFMOT quantize the int32 ids that feed it)
    x = tf.keras.layers.Activation("linear", name="embedding_output")(x)
    dropout = config.hidden_dropout_prob
    for i, block in enumerate(encoder.blocks):
        y = node(block.attention, f"layer_{i}_attention", QuantizableAttention)(x, attention_mask=mask)
        y = tf.keras.layers.Dropout(dropout, name=f"layer_{i}_attention_dropout")(y)
        y = tf.keras.layers.Add(name=f"layer_{i}_attention_residual")([x, y])
        x = node(block.attention_norm, f"layer_{i}_attention_norm")(y)
        # BERT has no dropout between the two feed-forward Dense layers (our FeedForward's inner one)
        y = node(block.feed_forward, f"layer_{i}_feed_forward", QuantizableFeedForward, dropout=0.0)(x)
        y = tf.keras.layers.Dropout(dropout, name=f"layer_{i}_feed_forward_dropout")(y)
        y = tf.keras.layers.Add(name=f"layer_{i}_feed_forward_residual")([x, y])
        x = node(block.feed_forward_norm, f"layer_{i}_feed_forward_norm")(y)
    pooler = tf.keras.layers.Dense(config.hidden_size, activation="tanh", name="pooler")
    classifier = tf.keras.layers.Dense(config.num_labels, name="classifier")
    pooled = tf.keras.layers.Dropout(dropout, name="pooler_dropout")(pooler(x[:, 0]))  # [CLS]
    model = tf.keras.Model({"input_ids": input_ids, "attention_mask": attention_mask}, classifier(pooled))
    for layer, source in copies:
        layer.set_weights(source.get_weights())
    pooler.set_weights([w.numpy() for w in hf_model.bert.pooler.dense.weights])
    classifier.set_weights([w.numpy() for w in hf_model.classifier.weights])
    return model


def max_logit_difference(hf_model, model: tf.keras.Model, batch: Batch) -> float:
    ours = model({name: batch[name] for name in INPUT_NAMES}, training=False)
    theirs = hf_model(**{name: batch[name] for name in INPUT_NAMES}, training=False).logits
    return float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))


# === QuantizeConfigs ===

def _weight_quantizer():
    return quantize.quantizers.LastValueQuantizer(num_bits=8, per_axis=False, symmetric=True, narrow_range=True)


def _activation_quantizer():
    return quantize.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                      narrow_range=False)


def _named_activation(name: str):
    """FeedForward's activation under a name TFMOT's QuantizeAwareActivation knows (it quantizes before and after
    'gelu'); models.layers.feed_forward.get_activation returns GELU as an unnamed lambda."""
    if name not in ("gelu", "gelu_new", "gelu_approx"):
        return tf.keras.activations.get(name)
    approximate = name != "gelu"

    def gelu(x):
        return tf.nn.gelu(x, approximate=approximate)

    return gelu


class DenseSublayersQuantizeConfig(quantize.QuantizeConfig):
    """For a layer that holds Dense sublayers (attention, feed-forward): their kernels int8, the activations of
    the sublayers in `activations` 8-bit, and the layer's output 8-bit."""

    dense_names: tuple[str, ...] = ()
    activations: tuple[str, ...] = ()

    def _dense(self, layer):
        return [getattr(layer, name) for name in self.dense_names]

    def get_weights_and_quantizers(self, layer):
        return [(dense.kernel, _weight_quantizer()) for dense in self._dense(layer)]

    def set_quantize_weights(self, layer, quantize_weights):
        for dense, weight in zip(self._dense(layer), quantize_weights):
            dense.kernel = weight  # what TFMOT's Dense config does, one level down

    def get_activations_and_quantizers(self, layer):
        return [(getattr(layer, name).activation, _activation_quantizer()) for name in self.activations]

    def set_quantize_activations(self, layer, quantize_activations):
        for name, activation in zip(self.activations, quantize_activations):
            getattr(layer, name).activation = activation

    def get_output_quantizers(self, layer):
        return [_activation_quantizer()]

    def get_config(self):
        return {}


class AttentionQuantizeConfig(DenseSublayersQuantizeConfig):
    dense_names = ("query_dense", "key_dense", "value_dense", "output_dense")
    activations = ("query_dense", "key_dense", "value_dense")  # linear: quantized after the projection

    def get_activations_and_quantizers(self, layer):
        return super().get_activations_and_quantizers(layer) + [(tf.keras.activations.linear,
                                                                 _activation_quantizer())]

    def set_quantize_activations(self, layer, quantize_activations):
        super().set_quantize_activations(layer, quantize_activations[:-1])
        layer.context_activation = quantize_activations[-1]


class FeedForwardQuantizeConfig(DenseSublayersQuantizeConfig):
    dense_names = ("intermediate", "output_dense")
    activations = ("intermediate",)

    def get_activations_and_quantizers(self, layer):
        return [(_named_activation(layer.activation), _activation_quantizer())]


class OutputQuantizeConfig(quantize.QuantizeConfig):
    """Float computation, 8-bit output (embedding output, LayerNorm)."""

    def get_weights_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [_activation_quantizer()]

    def get_config(self):
        return {}


def quantize_scope():
    return quantize.quantize_scope({
        "QuantizableAttention": QuantizableAttention, "QuantizableFeedForward": QuantizableFeedForward,
        "TokenAndPositionEmbedding": TokenAndPositionEmbedding, "AttentionQuantizeConfig": AttentionQuantizeConfig,
        "FeedForwardQuantizeConfig": FeedForwardQuantizeConfig, "OutputQuantizeConfig": OutputQuantizeConfig})


def _annotate(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
    if isinstance(layer, QuantizableAttention):
        config = AttentionQuantizeConfig()
    elif isinstance(layer, FeedForward):
        config = FeedForwardQuantizeConfig()
    elif isinstance(layer, tf.keras.layers.LayerNormalization) or layer.name == "embedding_output":
        config = OutputQuantizeConfig()
    elif isinstance(layer, tf.keras.layers.Dense):
        config = None  # TFMOT's default 8-bit Dense config
    else:
        return layer  # embedding, adds, dropout, mask ops: float
    return quantize.quantize_annotate_layer(layer, config)


def quantize_classifier(model: tf.keras.Model) -> tf.keras.Model:
    """The Functional classifier with fake-quant ops (TFMOT QuantizeWrapperV2 around the annotated layers)."""
    with quantize_scope():
        annotated = tf.keras.models.clone_model(model, clone_function=_annotate)
        annotated.set_weights(model.get_weights())
        return quantize.quantize_apply(annotated)


# === TFLite ===

def convert_int8(model: tf.keras.Model, *, max_length: int) -> bytes:
    """The QAT model on token ids (batch, max_length) → int8 TFLite flatbuffer (builtins only)."""
    from moatkit.models.compress.ptq import token_id_signature

    wrapped = TokenIdClassifier(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([token_id_signature(wrapped, max_length)], wrapped)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as err:  # ConverterError carries a long MLIR dump: keep its first line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ModelError(f"TFLite conversion of the QAT model failed: {first}",
                         fix="leave qat out of `methods` and report the error") from err


def tflite_summary(model: str | Path | bytes) -> dict:
    """Tensor and op types of a flatbuffer (a path or its bytes): how much of it is int8."""
    from moatkit.models.compress.ptq import interpreter_class

    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    interpreter = interpreter_class()[0](**source)
    tensors = interpreter.get_tensor_details()
    dtypes = collections.Counter(np.dtype(t["dtype"]).name for t in tensors)
    by_index = {t["index"]: t for t in tensors}
    ops = interpreter._get_ops_details()  # noqa: SLF001 (the only API that lists ops and their operands)
    dense = [op for op in ops if op["op_name"] == "FULLY_CONNECTED"]

    def int8_operands(op):
        inputs = [by_index[i] for i in op["inputs"][:2] if i >= 0]
        return all(np.dtype(t["dtype"]) == np.int8 for t in inputs)

    return {"tensor_dtypes": dict(sorted(dtypes.items())), "ops": dict(collections.Counter(o["op_name"] for o in ops)),
            "fully_connected": len(dense), "fully_connected_int8": sum(int8_operands(op) for op in dense)}


# === The method ===

def predict_in_batches(predict, arrays: Batch, batch_size: int = 64) -> np.ndarray:
    """Logits of a predict function (Batch → (batch, labels)) over whole split arrays, `batch_size` at a time."""
    n = len(arrays["input_ids"])
    return np.concatenate([predict({name: arrays[name][i:i + batch_size] for name in INPUT_NAMES})
                           for i in range(0, n, batch_size)])


def keras_predict(model: tf.keras.Model):
    """A Batch → logits function for the Functional (or QAT) classifier."""
    return lambda batch: np.asarray(model({name: tf.constant(batch[name]) for name in INPUT_NAMES},
                                          training=False), np.float32)


def train_qat(context: CompressContext, settings: QATSettings, *, verbose: int = 0) -> tuple[tf.keras.Model, dict]:
    """Baseline → Functional rebuild (checked against the baseline's logits) → fake-quant model, fine-tuned."""
    from moatkit.models.compress.prune import fine_tune

    hf_model = context.load_baseline()
    model = functional_classifier(hf_model)
    difference = max_logit_difference(hf_model, model, context.batch("test", slice(0, 16)))
    if difference > 100 * PARITY_TOLERANCE:  # an encoder/HF mismatch would make every QAT number meaningless
        raise ModelError(f"the Functional rebuild of '{context.model_dir}' differs from it by {difference:.2e} "
                         "in the logits", fix="report this: models.checkpoints.load_bert_weights lost a weight")
    qat_model = quantize_classifier(model)
    steps = fine_tune(qat_model, context, settings, verbose=verbose)
    return qat_model, {"rebuild_max_logit_difference": difference, "fine_tune_steps": steps,
                       "params": int(hf_model.count_params())}


def serving_tflite(qat_model: tf.keras.Model, context: CompressContext) -> bytes:
    """The raw-string twin for the model repository (TFLite tokenizer in front), int8 like the token-id model."""
    from moatkit.models.compress.ptq import raw_string_tflite

    def configure(converter):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # QAT ranges come with the graph: no calibration

    return raw_string_tflite(TokenIdClassifier(qat_model), context, mode="int8", configure=configure)


def compress(context: CompressContext, settings: QATSettings, *, verbose: int = 0) -> list[Variant]:
    from moatkit.models.compress.ptq import tflite_predict

    settings.validate()
    qat_model, notes = train_qat(context, settings, verbose=verbose)
    path = context.method_dir("qat") / "int8.tflite"
    path.write_bytes(convert_int8(qat_model, max_length=context.max_length))
    predict = tflite_predict(path, num_threads=context.config.num_threads)
    dev = context.arrays["dev"]  # how faithfully TFLite runs the QAT graph; the report scores test accuracy
    agreement = np.mean(np.argmax(predict_in_batches(predict, dev), -1)
                        == np.argmax(predict_in_batches(keras_predict(qat_model), dev), -1))
    notes.update({"epochs": settings.epochs, "learning_rate": settings.learning_rate,
                  "weights": "int8 symmetric per-tensor",
                  "activations": "int8 around every Dense; embedding tables, LayerNorm, softmax float",
                  "dev_agreement_tflite_vs_qat_keras": float(agreement), **tflite_summary(path)})
    return [Variant(name="qat-int8", method="qat", tflite_path=path, serving_tflite=serving_tflite(qat_model, context),
                    predict=predict, params=notes.pop("params"), notes=notes)]
