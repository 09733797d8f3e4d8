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
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.saved_model import load_v1_in_v2

from moatkit.serving.tensors import FAILED_PRECONDITION, UNKNOWN, ServingError, coerce, invalid

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
TFLITE_FILE = "model.tflite"  # served instead of the SavedModel with --prefer_tflite_model


def _read_meta_graph(export_dir: str) -> meta_graph_pb2.MetaGraphDef:
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
    return graphs[0]


class _SessionModelLoader(load_v1_in_v2._EagerSavedModelLoader):
    """Loads a TF1 (session) SavedModel the way TF Serving's session runs it: placeholder and signature shapes are
    not enforced, so any feed the graph can compute is taken, and graphs whose declared shapes contradict an op
    that a signature never runs (TF Serving's half_plus_three) still load. tf.saved_model.load has no such
    option; its own v1 loader is reused with the shapes relaxed in the MetaGraphDef it reads."""

    def get_meta_graph_def_from_tags(self, tags):
        meta_graph = super().get_meta_graph_def_from_tags(tags)
        unknown = tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
        for node in meta_graph.graph_def.node:
            if node.op in ("Placeholder", "PlaceholderV2"):
                node.attr["shape"].shape.CopyFrom(unknown)
        for signature in meta_graph.signature_def.values():
            for info in [*signature.inputs.values(), *signature.outputs.values()]:
                info.tensor_shape.CopyFrom(unknown)
        return meta_graph


def load_saved_model(path: str, meta_graph: meta_graph_pb2.MetaGraphDef, tags: list[str]):
    """A TF2 SavedModel (with an object graph) through tf.saved_model.load; a TF1 one as a session model."""
    if meta_graph.object_graph_def.nodes:
        return tf.saved_model.load(path, tags=tags)
    return _SessionModelLoader(path).load(tags=tags)


class Servable:
    """A loaded SavedModel version; thread-safe to call from many request threads.

    Inputs are fed as they come, whatever the signature's static shape says: TF Serving runs every SavedModel in a
    session that takes any feed the graph can compute (for TF1 models, see `_SessionModelLoader`), and restored TF2
    signature functions behave the same, so a shape the graph cannot use fails in the graph with TensorFlow's own
    message and code."""

    check_method_names = False  # --enable_signature_method_name_check: Classify/Regress need their method names

    def __init__(self, *, name: str, version: int, path: str, batcher=None):
        self.name, self.version, self.path = name, version, path
        meta_graph = _read_meta_graph(path)
        self.signature_defs = dict(meta_graph.signature_def)
        self._loaded = load_saved_model(path, meta_graph, ["serve"])
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
        if self.check_method_names and sig.method_name != method:
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
