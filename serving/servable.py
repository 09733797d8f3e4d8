"""A loaded model version and the calls TF Serving makes on it: predict, classify, regress.

`Servable` serves a SavedModel; `moatkit.serving.tflite_servable.TFLiteServable` serves a version's model.tflite
through the same interface. The model manager loads, routes and unloads them.
"""
from __future__ import annotations

import os
import re
import threading
from collections import Counter

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from moatkit.serving.tensors import FAILED_PRECONDITION, UNKNOWN, ServingError, coerce, invalid

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
TFLITE_FILE = "model.tflite"  # served instead of the SavedModel with --prefer_tflite_model


def _read_signature_defs(export_dir: str) -> dict:
    pb_path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    if os.path.exists(pb_path):
        with open(pb_path, "rb") as handle:
            saved_model.ParseFromString(handle.read())
    else:
        with open(os.path.join(export_dir, "saved_model.pbtxt"), encoding="utf-8") as handle:
            text_format.Parse(handle.read(), saved_model)
    graphs = [g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags] or list(
        saved_model.meta_graphs)
    if not graphs:
        raise ValueError(f"SavedModel at {export_dir} has no MetaGraphDef")
    return dict(graphs[0].signature_def)


class Servable:
    """A loaded SavedModel version; thread-safe to call from many request threads."""

    def __init__(self, *, name: str, version: int, path: str, batcher=None):
        self.name, self.version, self.path = name, version, path
        self.signature_defs = _read_signature_defs(path)
        self._loaded = tf.saved_model.load(path, tags=["serve"])
        self._functions = dict(self._loaded.signatures)
        self.batcher = batcher  # a serving.batching.BatchScheduler when --enable_batching
        self.signature_calls: Counter = Counter()  # signature name -> times the function ran
        self._calls_lock = threading.Lock()

    def signature_def(self, signature_name: str):
        name = signature_name or DEFAULT_SIGNATURE
        if name not in self.signature_defs or name not in self._functions:
            raise ServingError(FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
        return self.signature_defs[name]

    def input_dtypes(self, signature_name: str) -> dict[str, tf.DType]:
        sig = self.signature_def(signature_name)
        return {alias: tf.as_dtype(info.dtype) for alias, info in sorted(sig.inputs.items())}

    def predict(self, inputs: dict[str, np.ndarray], *, signature_name: str = "",
                output_filter=()) -> dict[str, np.ndarray]:
        name = signature_name or DEFAULT_SIGNATURE
        sig = self.signature_def(name)
        expected, sent = set(sig.inputs), set(inputs)
        if expected != sent:
            raise invalid(f"input size does not match signature: {len(sent)}!={len(expected)} "
                          f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                          f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                          f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
        for alias in output_filter:
            if alias not in sig.outputs:
                raise invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be "
                              f"in the set {{{','.join(sorted(sig.outputs))}}}.")
        feeds = {}
        for index, alias in enumerate(sorted(sig.inputs)):
            array = coerce(inputs[alias], tf.as_dtype(sig.inputs[alias].dtype), arg_index=index)
            _check_shape(alias, array.shape, sig.inputs[alias].tensor_shape)
            if self.batcher is not None and array.dtype.kind in "SU":
                array = array.astype(object)  # bytes and str rows from different requests concatenate
            feeds[alias] = array
        if self.batcher is not None:
            results = self.batcher.submit((self, name), lambda merged: self._run(name, merged), feeds,
                                          model=self.name)
        else:
            results = self._run(name, feeds)
        wanted = set(output_filter) or set(results)
        return {alias: value for alias, value in results.items() if alias in wanted}

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of the signature function (a whole batch when batching)."""
        sig = self.signature_defs[name]
        with self._calls_lock:
            self.signature_calls[name] += 1
        try:
            tensors = {alias: tf.constant(array, dtype=tf.as_dtype(sig.inputs[alias].dtype))
                       for alias, array in feeds.items()}
            results = self._functions[name](**tensors)
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as err:
            raise invalid(_error_text(getattr(err, "message", None) or str(err)) or type(err).__name__) from None
        except tf.errors.OpError as err:
            raise ServingError(_code_name(err), _error_text(err.message)) from None
        return {alias: value.numpy() for alias, value in results.items()}

    # -- classify / regress: signatures whose single string input takes serialized tf.Example protos --

    def _examples_signature(self, signature_name: str, method: str):
        name = signature_name or DEFAULT_SIGNATURE
        sig = self.signature_def(name)
        if sig.method_name != method:
            kind = "classification" if method == CLASSIFY_METHOD else "regression"
            raise ServingError(FAILED_PRECONDITION, f"Expected {kind} signature method_name to be {method}. "
                                                    f"Was: {sig.method_name}")
        if len(sig.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        return name, sig, next(iter(sig.inputs))

    def classify(self, examples: list[bytes], *, signature_name: str = "") -> list[list[tuple[str, float]]]:
        name, sig, alias = self._examples_signature(signature_name, CLASSIFY_METHOD)
        out = self.predict({alias: np.array(examples, dtype=object)}, signature_name=name)
        classes, scores = out.get("classes"), out.get("scores")
        if classes is None and scores is None:
            raise invalid("Expected classification signature outputs to contain classes or scores.")
        batch = len(examples)
        results = []
        for row in range(batch):
            row_classes = [] if classes is None else [c.decode("utf-8", "replace") if isinstance(c, bytes)
                                                      else str(c) for c in np.reshape(classes[row], -1)]
            row_scores = [] if scores is None else [float(s) for s in np.reshape(scores[row], -1)]
            width = max(len(row_classes), len(row_scores))
            results.append([(row_classes[i] if row_classes else "", row_scores[i] if row_scores else 0.0)
                            for i in range(width)])
        return results

    def regress(self, examples: list[bytes], *, signature_name: str = "") -> list[float]:
        name, sig, alias = self._examples_signature(signature_name, REGRESS_METHOD)
        out = self.predict({alias: np.array(examples, dtype=object)}, signature_name=name)
        if "outputs" not in out:
            raise invalid("No output Tensor named 'outputs' in regression signature.")
        return [float(v) for v in np.reshape(out["outputs"], -1)]


def _check_shape(alias: str, shape: tuple, shape_proto) -> None:
    """Session-based TF Serving rejects feeds that don't fit the placeholder; restored TF2 functions don't."""
    if shape_proto.unknown_rank:
        return
    expected = [d.size for d in shape_proto.dim]
    if len(expected) != len(shape) or any(e >= 0 and e != got for e, got in zip(expected, shape)):
        raise invalid(f"input tensor alias {alias} has shape {list(shape)} which is incompatible with the "
                      f"signature shape {expected}")


def _error_text(message: str) -> str:
    """The line that says what went wrong in a TF function error (not "Graph execution error:", the
    "Detected at node" header or the indented node/stack lines), without the trailing [Op:...] tag."""
    lines = [line for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith((" ", "\t", "Detected at node", "<stack traces"))
              and line.strip() != "Graph execution error:"]
    text = useful[-1] if useful else (lines[0] if lines else "")
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", text).strip()


def _code_name(err: tf.errors.OpError) -> str:
    from tensorflow.core.protobuf import error_codes_pb2

    return error_codes_pb2.Code.Name(err.error_code)


def status_code(err: BaseException) -> str:
    """The canonical status code name TF Serving reports for an error."""
    if isinstance(err, ServingError):
        return err.code
    if isinstance(err, tf.errors.OpError):
        return _code_name(err)
    return UNKNOWN


def input_examples(model_input):
    """The tf.Example list of a tensorflow.serving.Input, with the context merged into each example."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        return list(model_input.example_list.examples)
    if kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        merged = []
        for example in with_context.examples:
            copy = type(example)()
            copy.CopyFrom(with_context.context)
            copy.MergeFrom(example)
            merged.append(copy)
        return merged
    raise invalid("Input is empty")
