"""A model version served by the TFLite interpreter (`--prefer_tflite_model`), like TF Serving's TfLiteSession.

When the flag is set and a version dir holds `model.tflite` next to the SavedModel, the model manager loads a
`TFLiteServable` instead of a `Servable`. It presents the same interface (signature_defs for metadata, predict,
classify/regress through signatures, the batcher), so REST, gRPC, warm-up and batching need no TFLite branch.

Signatures come from the flatbuffer's SignatureDefs (one signature runner each); their TensorInfos are rebuilt from
the runner's tensor details so GetModelMetadata shows the real aliases, dtypes and shapes (-1 for dynamic dims).
tensorflow_text's TFLite kernels (FastBertNormalize, FastWordpieceTokenize, RaggedTensorToTensor) are registered
when tensorflow_text is installed, so text models exported with `tflite: true` take raw strings end to end.
"""
from __future__ import annotations


import importlib
import os
import queue
import threading
import warnings
from collections import Counter

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from moatkit.serving.servable import PREDICT_METHOD, TFLITE_FILE, Servable
from moatkit.serving.tensors import INTERNAL, ServingError, invalid



def _custom_op_registerers() -> list:
    try:
        from tensorflow_text.core.pybinds import tflite_registrar
    except ImportError:  # a model without tf.text ops still loads
        return []
    return list(tflite_registrar.SELECT_TFTEXT_OPS)


def make_interpreter(*, model_path: str | None = None, model_content: bytes | None = None, num_threads=None):
    """A TFLite interpreter with the tensorflow_text kernels registered.

    `tf.lite.Interpreter` takes no custom op registerers; its subclass InterpreterWithCustomOps does but is not
    exported under tf.lite, hence the module import. The pip TensorFlow's deprecation warning (it points at
    ai_edge_litert, which has no tf.text kernels) is silenced: it would print at every version load."""
    module = importlib.import_module("tensorflow.lite.python.interpreter")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return module.InterpreterWithCustomOps(model_path=model_path, model_content=model_content,
                                               custom_op_registerers=_custom_op_registerers(),
                                               num_threads=num_threads)


def _tensor_info(detail: dict) -> meta_graph_pb2.TensorInfo:
    shape = detail.get("shape_signature", detail["shape"])  # -1 marks a dynamic dim
    return meta_graph_pb2.TensorInfo(
        name=detail["name"], dtype=tf.as_dtype(detail["dtype"]).as_datatype_enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d))
                                                           for d in shape]))


def signature_defs_of(interpreter) -> dict[str, meta_graph_pb2.SignatureDef]:
    """SignatureDef protos (method `predict`) for every signature in the flatbuffer."""
    defs = {}
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        for alias, detail in runner.get_input_details().items():
            signature.inputs[alias].CopyFrom(_tensor_info(detail))
        for alias, detail in runner.get_output_details().items():
            signature.outputs[alias].CopyFrom(_tensor_info(detail))
        defs[key] = signature
    return defs


class TFLiteServable(Servable):
    """A loaded `model.tflite`; thread-safe: each call borrows one interpreter of a small pool (a TFLite
    interpreter runs one invocation at a time)."""

    def __init__(self, *, name: str, version: int, path: str, batcher=None, interpreters: int = 1,
                 num_threads: int | None = None):
        # Servable.__init__ is not called: it would load the SavedModel this servable replaces.
        self.name, self.version, self.path = name, version, path
        model_path = os.path.join(path, TFLITE_FILE)
        pool = [make_interpreter(model_path=model_path, num_threads=num_threads) for _ in range(max(interpreters, 1))]
        if not pool[0].get_signature_list():
            raise ServingError(INTERNAL, f"{model_path} has no SignatureDefs; convert with "
                                         "TFLiteConverter.from_saved_model/from_concrete_functions so it has one")
        self.signature_defs = signature_defs_of(pool[0])
        self._functions = {key: key for key in self.signature_defs}  # Servable.signature_def checks membership
        self._pool: queue.Queue = queue.Queue()
        for interpreter in pool:
            self._pool.put((interpreter, {key: interpreter.get_signature_runner(key) for key in self.signature_defs}))
        self.batcher = batcher
        self.signature_calls: Counter = Counter()
        self._calls_lock = threading.Lock()

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._calls_lock:
            self.signature_calls[name] += 1
        if any(np.shape(array)[:1] == (0,) for array in feeds.values()):
            raise invalid("TFLite signatures need at least one row per input")
        interpreter, runners = self._pool.get()
        try:
            # The runner resizes dynamic inputs to each request's shape and copies outputs out of the arena.
            results = runners[name](**feeds)
        except (ValueError, RuntimeError) as err:
            message = str(err).strip().splitlines()
            raise invalid(message[0] if message else type(err).__name__) from None
        finally:
            self._pool.put((interpreter, runners))
        return {alias: np.asarray(value) for alias, value in results.items()}
