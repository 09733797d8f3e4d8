"""A model version served by the TFLite interpreter (`--prefer_tflite_model`), like TF Serving's TfLiteSession.

When the flag is set and a version dir holds `model.tflite` (next to the SavedModel or alone), the model manager loads a
`TFLiteServable` instead of a `Servable`. It presents the same interface (signature_defs for metadata, predict,
classify/regress through signatures, the batcher), so REST, gRPC, warm-up and batching need no TFLite branch.

Signatures come from the flatbuffer's SignatureDefs (one signature runner each); their TensorInfos are rebuilt from
the runner's tensor details so GetModelMetadata shows the real aliases, dtypes and shapes (-1 for dynamic dims).
A flatbuffer without them is served as TF Serving serves it (see `signature_defs_of`). With the flag, a version
dir may hold model.tflite alone.
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

from moatkit.serving.servable import DEFAULT_SIGNATURE, PREDICT_METHOD, TFLITE_FILE, Servable
from moatkit.serving.tensors import invalid



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


def signature_defs_of(interpreter, model_content: bytes = b"") -> tuple[dict[str, meta_graph_pb2.SignatureDef], bool]:
    """SignatureDef protos (method `predict`) of a flatbuffer, and whether they are its native signatures (one
    signature runner each). Models converted without signatures are served as TF Serving's TfLiteSession serves
    them: through the TF SignatureDefs stored in the `signature_defs_metadata` buffer when there are some, else
    as one `serving_default` whose aliases are the input and output tensor names."""
    if interpreter.get_signature_list():
        defs = {}
        for key in interpreter.get_signature_list():
            runner = interpreter.get_signature_runner(key)
            signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
            for alias, detail in runner.get_input_details().items():
                signature.inputs[alias].CopyFrom(_tensor_info(detail))
            for alias, detail in runner.get_output_details().items():
                signature.outputs[alias].CopyFrom(_tensor_info(detail))
            defs[key] = signature
        return defs, True
    stored = _metadata_signature_defs(model_content)
    if stored:
        return stored, False
    signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for details, infos in ((interpreter.get_input_details(), signature.inputs),
                           (interpreter.get_output_details(), signature.outputs)):
        for detail in details:
            infos[detail["name"]].CopyFrom(_tensor_info(detail))
    return {DEFAULT_SIGNATURE: signature}, False


def _metadata_signature_defs(model_content: bytes) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs that tf.lite's signature_def_utils.set_signature_defs stores as model metadata (a
    flexbuffer map of serialized protos); the pip TensorFlow does not ship the reader, hence these lines."""
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_content, 0))
    for metadata in model.metadata or []:
        if metadata.name == b"signature_defs_metadata":
            stored = flexbuffers.Loads(bytes(model.buffers[metadata.buffer].data))
            defs = {}
            for key, blob in stored.items():
                defs[key] = meta_graph_pb2.SignatureDef.FromString(blob if isinstance(blob, bytes) else
                                                                   blob.encode("latin-1"))
            return defs
    return {}


def _tensor_name_call(interpreter, signature: meta_graph_pb2.SignatureDef):
    """Runs `signature` by tensor names, filling tensors as TfLiteSession does: an input whose element count fits
    the tensor is reshaped to it, any other is resized to the request's shape; every output is copied out."""
    def index(name: str, details: list[dict]) -> int:
        return next(d["index"] for d in details if d["name"] == name.split(":")[0])

    inputs = {alias: index(info.name, interpreter.get_input_details()) for alias, info in signature.inputs.items()}
    outputs = {alias: index(info.name, interpreter.get_output_details()) for alias, info in signature.outputs.items()}

    def call(**feeds):
        shapes = {d["index"]: d["shape"] for d in interpreter.get_input_details()}
        for alias, array in feeds.items():
            if np.size(array) != int(np.prod(shapes[inputs[alias]])):
                interpreter.resize_tensor_input(inputs[alias], np.shape(array))
        interpreter.allocate_tensors()
        shapes = {d["index"]: (d["shape"], d["dtype"]) for d in interpreter.get_input_details()}
        for alias, array in feeds.items():
            shape, dtype = shapes[inputs[alias]]
            interpreter.set_tensor(inputs[alias], np.reshape(array, shape).astype(dtype))
        interpreter.invoke()
        return {alias: interpreter.get_tensor(i).copy() for alias, i in outputs.items()}

    return call


class TFLiteServable(Servable):
    """A loaded `model.tflite`; thread-safe: each call borrows one interpreter of a small pool (a TFLite
    interpreter runs one invocation at a time)."""

    def __init__(self, *, name: str, version: int, path: str, batcher=None, interpreters: int = 1,
                 num_threads: int | None = None):
        # Servable.__init__ is not called: it would load the SavedModel this servable replaces.
        self.name, self.version, self.path = name, version, path
        with open(os.path.join(path, TFLITE_FILE), "rb") as handle:
            content = handle.read()
        pool = [make_interpreter(model_content=content, num_threads=num_threads) for _ in range(max(interpreters, 1))]
        self.signature_defs, native = signature_defs_of(pool[0], content)
        self._functions = {key: key for key in self.signature_defs}  # Servable.signature_def checks membership
        self._pool: queue.Queue = queue.Queue()
        for interpreter in pool:
            calls = {key: interpreter.get_signature_runner(key) if native else _tensor_name_call(interpreter, sig)
                     for key, sig in self.signature_defs.items()}
            self._pool.put((interpreter, calls))
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
