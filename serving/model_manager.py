"""Model manager for moat-model-server: discovers, loads, warms up, routes and unloads SavedModel versions.

Mirrors TF Serving's ServerCore + AspiredVersionsManager with the availability-preserving policy:
- a model is `<base_path>/<int version>/saved_model.pb` (with --prefer_tflite_model also a lone
  `model.tflite`); the version policy (latest N / all / specific) picks the aspired versions from what is on disk;
- a new version is loaded and warmed up (replaying `assets.extra/tf_serving_warmup_requests`) before it
  becomes AVAILABLE, and versions that are no longer aspired are unloaded only once an aspired version is
  AVAILABLE, so a model never loses service during a transition;
- a version that fails to load ends in state END with its error in the status and is not retried until its
  saved_model.pb changes; it never replaces a healthy version.
The file system is polled every `poll_wait_seconds` in a background thread (0 = load once, no polling).

One moat extension, off unless `<base_path>/moat_routing.json` exists: canary routing (serving/routing.py).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import tensorflow as tf
from google.protobuf import text_format

from moatkit.serving.errors import ServingConfigError
from moatkit.serving.names import is_safe_model_name
from moatkit.serving.routing import ROUTING_FILE, Routing
from moatkit.serving.servable import TFLITE_FILE, Servable, input_examples, status_code
from moatkit.serving.tensors import NOT_FOUND, OK, ServingError, from_tensor_proto, invalid

log = logging.getLogger("moat.serving")

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
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




def configs_from_text(text: str, *, source: str = "model config") -> list[ModelConfig]:
    """Parses a text-format tensorflow.serving.ModelServerConfig (the --model_config_file format)."""
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as err:
        # the phrase is tensorflow_model_server's, so scripts that grep its log work with both servers
        raise ServingConfigError(f"{source}: Error parsing text-format tensorflow.serving.ModelServerConfig: {err}",
                          fix="see tensorflow_serving/config/model_server_config.proto") from None
    if proto.WhichOneof("config") == "custom_model_config":
        raise ServingConfigError(f"{source}: custom_model_config is not supported", fix="use model_config_list")
    configs = []
    for model in proto.model_config_list.config:
        if model.model_platform not in ("", "tensorflow"):
            raise ServingConfigError(f"{source}: model {model.name!r} has platform {model.model_platform!r}",
                              fix="only model_platform: \"tensorflow\" is served")
        if not model.name or not model.base_path:
            raise ServingConfigError(f"{source}: every config needs name and base_path")
        if not is_safe_model_name(model.name):
            raise ServingConfigError(f"{source}: model name {model.name!r} may not contain '/', '\\', control "
                              "characters, or be '.' or '..'", fix="use a plain name such as \"sentiment\"")
        which = model.model_version_policy.WhichOneof("policy_choice")
        config = ModelConfig(name=model.name, base_path=model.base_path, labels=dict(model.version_labels))
        if model.HasField("logging_config"):
            from moatkit.serving.request_logging import settings_from_proto

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
        raise ServingConfigError(f"{source}: duplicate model names {sorted(names)}")
    return configs


def configs_from_file(path: str) -> list[ModelConfig]:
    try:
        with open(path, encoding="utf-8") as handle:
            return configs_from_text(handle.read(), source=path)
    except OSError as err:
        raise ServingConfigError(f"--model_config_file={path}: {err.strerror}", fix="pass an existing file") from None


# === One loaded version ===

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
                 enable_warmup: bool = True, batcher=None, prefer_tflite: bool = False,
                 check_method_names: bool = False, tflite_interpreters: int = 1, tflite_threads: int | None = None):
        self.batcher = batcher
        self.prefer_tflite = prefer_tflite  # --prefer_tflite_model, see _load
        # --num_tflite_pools × --num_tflite_interpreters_per_pool interpreters run requests side by side, each on
        # tflite_threads threads (--tensorflow_intra_op_parallelism; None: TFLite's default)
        self.tflite_interpreters, self.tflite_threads = max(1, tflite_interpreters), tflite_threads
        self.check_method_names = check_method_names  # --enable_signature_method_name_check
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
        self._routing: dict[str, Routing] = {}  # model -> the routing file's rule, see ROUTING_FILE
        self._bad_routing: dict[str, float] = {}  # model -> mtime of a routing file that failed to parse

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
                from moatkit.serving.request_logging import RequestLogger

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

    def _model_files(self) -> tuple[str, ...]:
        """The files that make a numbered dir a version: a SavedModel, or with --prefer_tflite_model also a lone
        model.tflite (as TF Serving's TFLite platform finds them)."""
        return SAVED_MODEL_FILES + ((TFLITE_FILE,) if self.prefer_tflite else ())

    def _versions_on_disk(self, base_path: str) -> dict[int, str]:
        found = {}
        try:
            entries = os.listdir(base_path)
        except OSError:
            return found
        for entry in entries:
            path = os.path.join(base_path, entry)
            if entry.isdigit() and any(os.path.isfile(os.path.join(path, name)) for name in self._model_files()):
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
        self._read_routing(config)
        on_disk = self._versions_on_disk(config.base_path)
        if not on_disk and config.name not in self._missing_logged:
            self._missing_logged.add(config.name)
            log.warning("No versions of servable %s found under base path %s", config.name, config.base_path)
        aspired = config.aspired(list(on_disk))
        states = self._states.setdefault(config.name, {})
        for version in sorted(aspired, reverse=True):
            path = on_disk[version]
            mtime = _source_mtime(path, self._model_files())
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

    def _read_routing(self, config: ModelConfig) -> None:
        path = os.path.join(config.base_path, ROUTING_FILE)
        try:
            mtime = os.path.getmtime(path)
        except OSError:
            with self._lock:
                self._routing.pop(config.name, None)
            return
        current = self._routing.get(config.name)
        if current is not None and current.mtime == mtime:
            return
        if self._bad_routing.get(config.name) == mtime:
            return
        try:
            routing = Routing.from_file(path, mtime)
        except Exception as err:  # a broken rule must never stop version management; the last good one stays
            self._bad_routing[config.name] = mtime
            log.error("Ignoring routing file %s: %s", path, err)
            return
        with self._lock:
            self._routing[config.name] = routing
        log.info("Routing for %s: %s", config.name, routing)

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
                from moatkit.serving.tflite_servable import TFLiteServable

                servable = TFLiteServable(name=name, version=version, path=path, batcher=self.batcher,
                                          interpreters=self.tflite_interpreters, num_threads=self.tflite_threads)
            else:
                servable = Servable(name=name, version=version, path=path, batcher=self.batcher)
            servable.check_method_names = self.check_method_names
            if self.enable_warmup:
                self._warmup(servable)
        except Exception as err:  # any load failure is reported in status, never raised to the poller
            message = getattr(err, "message", None) or str(err) or type(err).__name__
            log.error("Loading servable: {name: %s version: %d} failed: %s", name, version, message)
            with self._lock:
                state.state, state.error_code, state.error_message = END, status_code(err), message
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
                examples = [e.SerializeToString() for e in input_examples(request.input)]
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

    def get_servable(self, name: str, *, version: int | None = None, label: str | None = None,
                     route: bool = False) -> Servable:
        """`route`: an inference request, which the routing file (if any) may send to the canary."""
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
            routing = self._routing.get(name) if route and config is not None and version is None else None
            if routing is not None:  # the picked label's version, else the default label's, else the newest
                for picked in (routing.pick(), routing.default_label):
                    state = states.get(config.labels.get(picked, -1))
                    if state is not None and state.state == AVAILABLE and state.servable is not None:
                        return state.servable
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


def _source_mtime(path: str, model_files: tuple[str, ...]) -> float:
    for candidate in model_files:
        try:
            return os.path.getmtime(os.path.join(path, candidate))
        except OSError:
            continue
    return 0.0
