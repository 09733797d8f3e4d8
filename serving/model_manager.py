"""Model manager for moat-model-server: discovers, loads, warms up, routes and unloads SavedModel versions.

Mirrors TF Serving's ServerCore + AspiredVersionsManager with the availability-preserving policy:
- a model is `<base_path>/<int version>/saved_model.pb`; the version policy (latest N / all / specific) picks
  the aspired versions from what is on disk;
- a new version is loaded and warmed up (replaying `assets.extra/tf_serving_warmup_requests`) before it
  becomes AVAILABLE, and versions that are no longer aspired are unloaded only once an aspired version is
  AVAILABLE, so a model never loses service during a transition;
- a version that fails to load ends in state END with its error in the status and is not retried until its
  saved_model.pb changes; it never replaces a healthy version.
The file system is polled every `poll_wait_seconds` in a background thread (0 = load once, no polling).
"""
from __future__ import annotations

from app import env as _env  # noqa: F401  (selects tf_keras before TensorFlow loads)

import logging
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from app.errors import ConfigError
from serving.names import is_safe_model_name
from serving.tensors import (FAILED_PRECONDITION, NOT_FOUND, OK, UNKNOWN, ServingError,
                             coerce, from_tensor_proto, invalid)

log = logging.getLogger("moat.serving")

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


# === Config ===

@dataclass
class ModelConfig:
    """One served model: where its versions live and which of them to serve."""

    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)
    logging: object = None  # serving.request_logging.LoggingSettings from the model's logging_config

    def aspired(self, on_disk: list[int]) -> set[int]:
        if self.policy == "all":
            return set(on_disk)
        if self.policy == "specific":
            return set(self.versions) & set(on_disk)
        return set(sorted(on_disk)[-max(self.num_versions, 1):])


TFLITE_FILE = "model.tflite"  # served instead of the SavedModel with --prefer_tflite_model


def configs_from_text(text: str, *, source: str = "model config") -> list[ModelConfig]:
    """Parses a text-format tensorflow.serving.ModelServerConfig (the --model_config_file format)."""
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as err:
        # the phrase is tensorflow_model_server's, so scripts that grep its log work with both servers
        raise ConfigError(f"{source}: Error parsing text-format tensorflow.serving.ModelServerConfig: {err}",
                          fix="see tensorflow_serving/config/model_server_config.proto") from None
    if proto.WhichOneof("config") == "custom_model_config":
        raise ConfigError(f"{source}: custom_model_config is not supported", fix="use model_config_list")
    configs = []
    for model in proto.model_config_list.config:
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"{source}: model {model.name!r} has platform {model.model_platform!r}",
                              fix="only model_platform: \"tensorflow\" is served")
        if not model.name or not model.base_path:
            raise ConfigError(f"{source}: every config needs name and base_path")
        if not is_safe_model_name(model.name):
            raise ConfigError(f"{source}: model name {model.name!r} may not contain '/', '\\', control "
                              "characters, or be '.' or '..'", fix="use a plain name such as \"sentiment\"")
        which = model.model_version_policy.WhichOneof("policy_choice")
        config = ModelConfig(name=model.name, base_path=model.base_path, labels=dict(model.version_labels))
        if model.HasField("logging_config"):
            from serving.request_logging import settings_from_proto

            config.logging = settings_from_proto(model.name, model.logging_config, source=source)
        if which == "all":
            config.policy = "all"
        elif which == "specific":
            config.policy, config.versions = "specific", tuple(model.model_version_policy.specific.versions)
        elif which == "latest":
            config.num_versions = model.model_version_policy.latest.num_versions or 1
        configs.append(config)
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: duplicate model names {sorted(names)}")
    return configs


def configs_from_file(path: str) -> list[ModelConfig]:
    try:
        with open(path, encoding="utf-8") as handle:
            return configs_from_text(handle.read(), source=path)
    except OSError as err:
        raise ConfigError(f"--model_config_file={path}: {err.strerror}", fix="pass an existing file") from None


# === One loaded version ===

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


def _error_code(err: BaseException) -> str:
    if isinstance(err, ServingError):
        return err.code
    if isinstance(err, tf.errors.OpError):
        return _code_name(err)
    return UNKNOWN


# === Versions and the manager ===

@dataclass
class VersionState:
    version: int
    state: str = START
    error_code: str = OK
    error_message: str = ""
    servable: Servable | None = None
    source_mtime: float = 0.0


class ModelManager:
    """Serves the configured models; `get_servable` is the routing entry point for REST and gRPC."""

    def __init__(self, configs: list[ModelConfig], *, poll_wait_seconds: float = 1.0,
                 enable_warmup: bool = True, batcher=None, prefer_tflite: bool = False):
        self.batcher = batcher
        self.prefer_tflite = prefer_tflite  # --prefer_tflite_model, see _load
        self._configs = {c.name: c for c in configs}
        self._states: dict[str, dict[int, VersionState]] = {c.name: {} for c in configs}
        self._lock = threading.RLock()
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.poll_wait_seconds = poll_wait_seconds
        self.enable_warmup = enable_warmup
        self.warmup_counts: dict[tuple[str, int], int] = {}
        self._loggers: dict[tuple, object] = {}  # (model, LoggingSettings) -> RequestLogger
        self._missing_logged: set[str] = set()

    # -- lifecycle --

    def start(self) -> None:
        """Loads what is on disk now, then keeps polling in a daemon thread."""
        self.reload_once()
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._poll, name="moat-fs-poll", daemon=True)
            self._thread.start()

    def stop(self, *, unload: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if unload:
            with self._lock:
                for name in list(self._states):
                    for state in self._states[name].values():
                        if state.state == AVAILABLE:
                            self._unload(name, state)
        with self._lock:
            for logger in self._loggers.values():
                logger.close()
            self._loggers.clear()

    def request_logger(self, name: str):
        """The RequestLogger of a model whose config has a logging_config, else None."""
        with self._lock:
            config = self._configs.get(name)
            if config is None or config.logging is None:
                return None
            key = (name, config.logging)
            if key not in self._loggers:
                from serving.request_logging import RequestLogger

                for old_key in [k for k in self._loggers if k[0] == name]:
                    self._loggers.pop(old_key).close()
                self._loggers[key] = RequestLogger(name, config.logging)
            return self._loggers[key]

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.reload_once()
            except Exception:  # keep serving: one bad poll must not kill the poller
                log.exception("file system poll failed")

    def reload_config(self, configs: list[ModelConfig]) -> None:
        """Applies a new model list (HandleReloadConfigRequest / --model_config_file polling)."""
        with self._reload_lock:  # no poll may reconcile a model while the model list changes
            with self._lock:
                removed = set(self._configs) - {c.name for c in configs}
                self._configs = {c.name: c for c in configs}
                for config in configs:
                    self._states.setdefault(config.name, {})
                for name in removed:
                    for state in self._states.get(name, {}).values():
                        if state.state == AVAILABLE:
                            self._unload(name, state)
            self._reconcile_all()

    # -- file system -> transitions --

    @staticmethod
    def _versions_on_disk(base_path: str) -> dict[int, str]:
        found = {}
        try:
            entries = os.listdir(base_path)
        except OSError:
            return found
        for entry in entries:
            path = os.path.join(base_path, entry)
            if entry.isdigit() and os.path.isdir(path) and (
                    os.path.exists(os.path.join(path, "saved_model.pb"))
                    or os.path.exists(os.path.join(path, "saved_model.pbtxt"))):
                found[int(entry)] = path
        return found

    def reload_once(self) -> None:
        with self._reload_lock:
            self._reconcile_all()

    def _reconcile_all(self) -> None:
        with self._lock:
            configs = list(self._configs.values())
        for config in configs:
            self._reconcile(config)

    def _reconcile(self, config: ModelConfig) -> None:
        on_disk = self._versions_on_disk(config.base_path)
        if not on_disk and config.name not in self._missing_logged:
            self._missing_logged.add(config.name)
            log.warning("No versions of servable %s found under base path %s", config.name, config.base_path)
        aspired = config.aspired(list(on_disk))
        states = self._states.setdefault(config.name, {})
        for version in sorted(aspired, reverse=True):
            path = on_disk[version]
            mtime = _source_mtime(path)
            current = states.get(version)
            if current is not None and current.state == AVAILABLE:
                continue
            if current is not None and current.error_code != OK and current.source_mtime == mtime:
                continue  # failed before and unchanged since: don't retry every poll
            self._load(config.name, version, path, mtime)
        with self._lock:
            aspired_ready = any(states[v].state == AVAILABLE for v in aspired if v in states)
            for version, state in list(states.items()):
                gone = version not in on_disk
                if state.state == AVAILABLE and version not in aspired and (aspired_ready or gone):
                    self._unload(config.name, state)

    def _load(self, name: str, version: int, path: str, mtime: float) -> None:
        state = VersionState(version=version, state=START, source_mtime=mtime)
        with self._lock:
            self._states[name][version] = state
            state.state = LOADING
        log.info("Loading servable: {name: %s version: %d} from %s", name, version, path)
        try:
            # TFLite hook (--prefer_tflite_model, as in TF Serving): a version dir that also holds model.tflite
            # is served by the TFLite interpreter; serving/tflite_servable.py has the same interface.
            if self.prefer_tflite and os.path.exists(os.path.join(path, TFLITE_FILE)):
                from serving.tflite_servable import TFLiteServable

                servable = TFLiteServable(name=name, version=version, path=path, batcher=self.batcher)
            else:
                servable = Servable(name=name, version=version, path=path, batcher=self.batcher)
            if self.enable_warmup:
                self._warmup(servable)
        except Exception as err:  # any load failure is reported in status, never raised to the poller
            message = getattr(err, "message", None) or str(err) or type(err).__name__
            log.error("Loading servable: {name: %s version: %d} failed: %s", name, version, message)
            with self._lock:
                state.state, state.error_code, state.error_message = END, _error_code(err), message
            return
        with self._lock:
            state.servable, state.state = servable, AVAILABLE
        log.info("Successfully loaded servable version {name: %s version: %d}", name, version)

    def _unload(self, name: str, state: VersionState) -> None:
        state.state = UNLOADING
        log.info("Unloading servable version {name: %s version: %d}", name, state.version)
        # In-flight requests keep their own reference to the Servable; dropping ours frees it after them.
        state.servable = None
        state.state = END

    def _warmup(self, servable: Servable) -> None:
        from tensorflow_serving.apis import prediction_log_pb2

        warmup_path = os.path.join(servable.path, WARMUP_FILE)
        if not os.path.exists(warmup_path):
            return
        started, count = time.monotonic(), 0
        for record in tf.data.TFRecordDataset(warmup_path):
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise invalid(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) "
                              f"at {warmup_path}")
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            kind = entry.WhichOneof("log_type")
            if kind == "predict_log":
                request = entry.predict_log.request
                inputs = {k: from_tensor_proto(v) for k, v in request.inputs.items()}
                servable.predict(inputs, signature_name=request.model_spec.signature_name,
                                 output_filter=tuple(request.output_filter))
            elif kind in ("classify_log", "regress_log"):
                request = getattr(entry, kind).request
                examples = [e.SerializeToString() for e in _input_examples(request.input)]
                run = servable.classify if kind == "classify_log" else servable.regress
                run(examples, signature_name=request.model_spec.signature_name)
            else:
                raise invalid(f"Unsupported log_type for warmup: {kind}")
        self.warmup_counts[(servable.name, servable.version)] = count
        log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d. "
                 "Elapsed time (microseconds): %d.", warmup_path, count,
                 int((time.monotonic() - started) * 1e6))

    # -- routing and status --

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._configs)

    def get_servable(self, name: str, *, version: int | None = None, label: str | None = None) -> Servable:
        with self._lock:
            config = self._configs.get(name)
            if label:
                if version is not None:
                    raise invalid(f"Both model version ({version}) and model version label ({label}) "
                                  "cannot be supplied.")
                if config is None or label not in config.labels:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = config.labels[label]
            states = self._states.get(name, {}) if config is not None else {}
            if version is None:
                ready = [s for s in states.values() if s.state == AVAILABLE and s.servable is not None]
                if ready:
                    return max(ready, key=lambda s: s.version).servable
                raise ServingError(NOT_FOUND, f"Servable not found for request: Latest({name})")
            state = states.get(version)
            if state is not None and state.state == AVAILABLE and state.servable is not None:
                return state.servable
            raise ServingError(NOT_FOUND, f"Servable not found for request: Specific({name}, {version})")

    def version_status(self, name: str, *, version: int | None = None) -> list[VersionState]:
        """Version states, newest first (TF Serving's ServableStateMonitor order)."""
        with self._lock:
            states = self._states.get(name, {})
            if version is not None:
                if version not in states:
                    raise ServingError(NOT_FOUND, f"Could not find version {version} of model {name}")
                return [_copy(states[version])]
            if not states:
                raise ServingError(NOT_FOUND, f"Could not find any versions of model {name}")
            return [_copy(states[v]) for v in sorted(states, reverse=True)]

    def resolve_label(self, name: str, label: str) -> int:
        with self._lock:
            config = self._configs.get(name)
            if config is None or label not in config.labels:
                raise invalid(f"Unrecognized servable version label: {label}")
            return config.labels[label]


def _copy(state: VersionState) -> VersionState:
    return VersionState(version=state.version, state=state.state, error_code=state.error_code,
                        error_message=state.error_message)


def _source_mtime(path: str) -> float:
    for candidate in ("saved_model.pb", "saved_model.pbtxt"):
        try:
            return os.path.getmtime(os.path.join(path, candidate))
        except OSError:
            continue
    return 0.0


def _input_examples(model_input):
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
