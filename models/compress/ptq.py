"""TFLite post-training quantization of the float32 baseline: float16, dynamic range, full int8.

The flatbuffers are converted from the model on token ids (input_ids, attention_mask (batch, max_length) int32 →
logits), so they hold TFLite builtins only and run on the LiteRT interpreter (`ai-edge-litert`) without
tensorflow_text kernels; that is what the report measures. For the model repository each variant also gets a
raw-string twin (the exporter's TFLite tokenizer in front, same quantization), served with --prefer_tflite_model.

- float16: weights stored as float16, dequantized at load (half the size, float32 arithmetic).
- dynamic: weights int8, activations quantized on the fly per op (int8 matmuls, no calibration).
- int8: weights and activations int8 with ranges calibrated on `representative_examples` train sentences; ops
  without an int8 kernel fall back to float (the note says whether the strict all-int8 conversion succeeded).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Iterable


import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ModelError
from moatkit.models.compress.base import INPUT_NAMES, Batch, CompressContext, PTQSettings, Variant, logits_of

MODES = ("float32", "float16", "dynamic", "int8")


def token_id_signature(model, max_length: int) -> tf.types.experimental.ConcreteFunction:
    """serving_default on token ids; batch is dynamic, width fixed (static shapes make TFLite faster)."""
    spec = tf.TensorSpec([None, max_length], tf.int32)

    @tf.function(input_signature=[tf.TensorSpec.from_spec(spec, name=n) for n in INPUT_NAMES])
    def serving_default(input_ids, attention_mask):
        return {"logits": logits_of(model(input_ids=input_ids, attention_mask=attention_mask, training=False))}

    return serving_default.get_concrete_function()


def _configure(converter: tf.lite.TFLiteConverter, mode: str, representative: Callable | None, strict: bool):
    if mode not in MODES:
        raise ModelError(f"unknown quantization mode '{mode}'", fix=f"choose from {', '.join(MODES)}")
    if mode == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        if representative is None:
            raise ModelError("full int8 quantization needs a representative dataset")
        converter.representative_dataset = representative
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.target_spec.supported_ops = ops if strict else ops + [tf.lite.OpsSet.TFLITE_BUILTINS]


def _convert(make_converter: Callable[[], tf.lite.TFLiteConverter], mode: str,
             representative: Callable | None) -> tuple[bytes, dict]:
    """Returns the flatbuffer and notes; full int8 tries the strict all-int8 op set first."""
    attempts = [True, False] if mode == "int8" else [False]
    first_error = None
    for strict in attempts:
        converter = make_converter()
        _configure(converter, mode, representative, strict)
        try:
            flatbuffer = converter.convert()
        except Exception as err:  # the converter raises ConverterError / RuntimeError with long MLIR dumps
            first_error = first_error or (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            continue
        notes = {"int8_strict": strict, **({"strict_int8_error": first_error} if first_error else {})} \
            if mode == "int8" else {}
        return flatbuffer, notes
    raise ModelError(f"TFLite {mode} conversion failed: {first_error}", fix=f"leave {mode} out of ptq.modes")


def convert_token_model(model, *, max_length: int, mode: str, representative: Iterable[Batch] | None = None,
                        function: tf.types.experimental.ConcreteFunction | None = None) -> tuple[bytes, dict]:
    """A Keras/HF model on token ids → TFLite flatbuffer (builtins only). Returns (bytes, notes). Pass the
    `function` of token_id_signature to convert several modes from one trace."""
    function = function or token_id_signature(model, max_length)
    samples = list(representative) if representative is not None else None

    def dataset():
        for batch in samples:
            yield {name: batch[name] for name in INPUT_NAMES}

    return _convert(lambda: tf.lite.TFLiteConverter.from_concrete_functions([function], model), mode,
                    dataset if samples else None)


def raw_string_tflite(model, context: CompressContext, *, mode: str, representative_texts: list[str] | None = None,
                      configure: Callable[[tf.lite.TFLiteConverter], None] | None = None) -> bytes:
    """The serving twin: raw strings → TFLite tokenizer (tensorflow_text custom ops) → model → serving_default
    outputs of serving/export.py (probabilities, label_id, label). `configure` lets a caller set its own
    converter options (e.g. QAT: optimizations only) instead of `mode`."""
    from moatkit.models.export import TextModelModule, TFLiteBertTokenizer

    module = TextModelModule(model=WithLogits(model), vocab=context.vocab, labels=context.labels,
                             max_length=context.max_length, lower_case=context.task.get("lower_case", True))
    module.tokenizer = TFLiteBertTokenizer(module.tokenizer)
    function = module.signatures()["serving_default"].get_concrete_function()

    def make_converter():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.allow_custom_ops = True  # FastBertNormalize, FastWordpieceTokenizeWithOffsets, ...
        return converter

    if configure is not None:
        converter = make_converter()
        configure(converter)
        return converter.convert()

    def texts():
        for text in representative_texts or []:
            yield {"text": np.array([text], dtype=object)}

    if mode == "int8":
        # The converter's calibrator has no tensorflow_text kernels, so ranges cannot be calibrated through the
        # tokenizer; the serving twin uses dynamic-range int8 weights instead (see docs/compression.md).
        mode = "dynamic"
    return _convert(make_converter, mode, texts if representative_texts else None)[0]


class WithLogits(tf.Module):
    """Adapts a model that returns logits (a Keras model) to TextModelModule's `model(...).logits` call."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def __call__(self, **kwargs):
        return _Logits(logits_of(self.inner(**kwargs)))


class _Logits:
    def __init__(self, logits):
        self.logits = logits


# === Running flatbuffers ===

def interpreter_class():
    """LiteRT's Interpreter (ai-edge-litert); tf.lite.Interpreter when it is not installed (same API)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        return tf.lite.Interpreter, "tf.lite (ai-edge-litert not installed)"


def tflite_predict(path: str | Path, *, num_threads: int | None = None) -> Callable[[Batch], np.ndarray]:
    """A predict function over a token-id flatbuffer's serving_default (one interpreter, called serially)."""
    cls, _ = interpreter_class()
    interpreter = cls(model_path=str(path), num_threads=num_threads or os.cpu_count())
    runner = interpreter.get_signature_runner("serving_default")

    def predict(batch: Batch) -> np.ndarray:
        return np.asarray(runner(**{name: batch[name] for name in INPUT_NAMES})["logits"], np.float32)

    return predict


def compress(context: CompressContext, settings: PTQSettings) -> list[Variant]:
    model = context.load_baseline()
    out = context.method_dir("ptq")
    params = int(model.count_params())
    representative = context.representative(settings.representative_examples)
    sample_texts = [context.texts["train"][i] for i in np.random.default_rng(context.config.seed).choice(
        len(context.texts["train"]), min(settings.representative_examples, len(context.texts["train"])),
        replace=False)]
    function = token_id_signature(model, context.max_length)
    _, engine = interpreter_class()
    variants = []
    for mode in settings.modes:
        flatbuffer, notes = convert_token_model(model, max_length=context.max_length, mode=mode, function=function,
                                                representative=representative if mode == "int8" else None)
        path = out / f"{mode}.tflite"
        path.write_bytes(flatbuffer)
        if mode == "int8":
            notes["serving_twin"] = "dynamic-range (calibration cannot run the tensorflow_text tokenizer ops)"
        variants.append(Variant(
            name=f"ptq-{mode}", method="ptq", tflite_path=path, params=params, notes={"interpreter": engine, **notes},
            serving_tflite=functools.partial(raw_string_tflite, model, context, mode=mode,
                                             representative_texts=sample_texts),
            predict=tflite_predict(path, num_threads=context.config.num_threads)))
    return variants
