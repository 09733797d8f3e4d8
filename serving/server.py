"""`moat-model-server`: a TF-Serving-compatible model server (gRPC + REST) for SavedModels.

It accepts tensorflow_model_server's flags (`--flag=value` form) and speaks TF Serving's gRPC protos and REST API,
so standard TF Serving clients work unmodified. It is written by hand because the real tensorflow_model_server
binary cannot be installed in every environment moatkit runs in (no apt repo, no Docker, pip-only); where the
binary is on PATH and MOAT_USE_REAL_TFSERVING=1, this entry point execs it with the same arguments instead.

Deviations from tensorflow_model_server: servers bind 127.0.0.1 unless MOAT_BIND_ALL=1; `--port=0` picks a free
gRPC port (the chosen ports are printed on stdout); the session-tuning flags are accepted and ignored with one log
line each. `--prefer_tflite_model` serves a version's `model.tflite` when present (serving/tflite_servable.py).
`--enable_batching` batches concurrent requests as described in serving/batching.py.
Safety: request bodies are capped (REST: --rest_api_max_request_bytes, an extension flag, answered with HTTP 413;
gRPC: grpc.max_receive_message_length in --grpc_channel_arguments, RESOURCE_EXHAUSTED), both 128 MiB by default
where TF Serving allows 2 GiB; SIGTERM drains in-flight requests before the process exits.
"""
from __future__ import annotations


import logging
import os
import re
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field

from moatkit.serving.errors import ServerError
from moatkit.serving.names import is_safe_model_name

log = logging.getLogger("moat.serving")

# name -> (type, default). Flags in SUPPORTED change behaviour; the rest are accepted for compatibility.
FLAGS: dict[str, tuple[type, object]] = {
    "port": (int, 8500),
    "grpc_socket_path": (str, ""),
    "rest_api_port": (int, 0),
    "rest_api_num_threads": (int, 16),
    "rest_api_timeout_in_ms": (int, 30000),
    "rest_api_enable_cors_support": (bool, False),
    "enable_batching": (bool, False),
    "allow_version_labels_for_unavailable_models": (bool, False),
    "batching_parameters_file": (str, ""),
    "enable_per_model_batching_params": (bool, False),
    "model_config_file": (str, ""),
    "model_config_file_poll_wait_seconds": (int, 0),
    "model_name": (str, "default"),
    "model_base_path": (str, ""),
    "num_load_threads": (int, 0),
    "num_unload_threads": (int, 0),
    "max_num_load_retries": (int, 5),
    "load_retry_interval_micros": (int, 60_000_000),
    "file_system_poll_wait_seconds": (int, 1),
    "flush_filesystem_caches": (bool, True),
    "tensorflow_session_parallelism": (int, 0),
    "tensorflow_session_config_file": (str, ""),
    "tensorflow_intra_op_parallelism": (int, 0),
    "tensorflow_inter_op_parallelism": (int, 0),
    "ssl_config_file": (str, ""),
    "platform_config_file": (str, ""),
    "per_process_gpu_memory_fraction": (float, 0.0),
    "saved_model_tags": (str, "serve"),
    "grpc_channel_arguments": (str, ""),
    "grpc_max_threads": (int, 0),
    "enable_model_warmup": (bool, True),
    "num_request_iterations_for_warmup": (int, 1),
    "version": (bool, False),
    "monitoring_config_file": (str, ""),
    "remove_unused_fields_from_bundle_metagraph": (bool, True),
    "prefer_tflite_model": (bool, False),
    "num_tflite_pools": (int, 1),
    "num_tflite_interpreters_per_pool": (int, 1),
    "enable_signature_method_name_check": (bool, False),
    "xla_cpu_compilation_enabled": (bool, False),
    "enable_profiler": (bool, True),
    "thread_pool_factory_config_file": (str, ""),
    "mixed_precision": (str, ""),
    "skip_initialize_tpu": (bool, False),
    "use_tflite_model": (bool, False),
    # moatkit extension (tensorflow_model_server has no REST body limit): larger bodies get HTTP 413
    "rest_api_max_request_bytes": (int, 128 * 1024 * 1024),
}
SUPPORTED = {"port", "rest_api_port", "rest_api_timeout_in_ms", "model_config_file",
             "model_config_file_poll_wait_seconds", "model_name", "model_base_path", "file_system_poll_wait_seconds",
             "enable_model_warmup", "version", "monitoring_config_file", "tensorflow_intra_op_parallelism",
             "tensorflow_inter_op_parallelism", "saved_model_tags", "rest_api_num_threads", "grpc_max_threads",
             "enable_batching", "batching_parameters_file", "prefer_tflite_model", "use_tflite_model",
             "enable_signature_method_name_check", "grpc_socket_path", "grpc_channel_arguments",
             "rest_api_max_request_bytes", "num_tflite_pools", "num_tflite_interpreters_per_pool"}


class FlagError(ServerError):
    """A command-line flag is unknown or malformed (exit code 2)."""


@dataclass
class Options:
    values: dict = field(default_factory=dict)
    explicit: set = field(default_factory=set)

    def __getattr__(self, name):
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def _parse_value(name: str, kind: type, text: str | None):
    if kind is bool:
        if text is None or text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise FlagError(f"--{name}={text}: not a boolean", fix=f"use --{name}=true or --{name}=false")
    if text is None:
        raise FlagError(f"--{name}: missing value", fix=f"use --{name}=VALUE")
    try:
        return kind(text)
    except ValueError:
        raise FlagError(f"--{name}={text}: expected {kind.__name__}", fix=f"pass a {kind.__name__} value") from None


def parse_flags(argv: list[str]) -> Options:
    """tensorflow_model_server-style flags: `--name=value` or `--name value` (one or two dashes); booleans
    also as `--name` / `--noname`, and `--name true|false`."""
    options = Options(values={name: default for name, (_, default) in FLAGS.items()})
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise FlagError(f"unexpected argument {arg!r}", fix="flags take the form --name=value")
        name, eq, text = arg.lstrip("-").partition("=")
        text = text if eq else None
        if name not in FLAGS and name.startswith("no") and FLAGS.get(name[2:], (None,))[0] is bool and text is None:
            name, text = name[2:], "false"
        if name not in FLAGS:
            raise FlagError(f"unknown command line flag '{name}'", fix="see `moat-model-server --help`")
        kind = FLAGS[name][0]
        if text is None and index < len(args):
            following = args[index]
            if kind is bool:
                if following.lower() in ("true", "false"):
                    text, index = following, index + 1
            elif not following.startswith("--"):
                text, index = following, index + 1
        options.values[name] = _parse_value(name, kind, text)
        options.explicit.add(name)
    return options


def validate(options: Options) -> None:
    if options.version:
        return
    if options.model_config_file and "model_base_path" in options.explicit:
        raise FlagError("--model_base_path and --model_config_file cannot both be supplied",
                        fix="put every model in the config file")
    if not options.model_config_file and not options.model_base_path:
        raise FlagError("--model_base_path is required (or --model_config_file)",
                        fix="pass --model_base_path=/path/to/model (containing numbered version dirs)")
    if options.model_base_path and not os.path.isdir(options.model_base_path):
        raise FlagError(f"--model_base_path={options.model_base_path}: no such directory",
                        fix="pass the model dir that holds <version>/saved_model.pb")
    if options.model_base_path and not os.path.isabs(options.model_base_path):
        options.values["model_base_path"] = os.path.abspath(options.model_base_path)
    if options.model_config_file and not os.path.isfile(options.model_config_file):
        raise FlagError(f"--model_config_file={options.model_config_file}: no such file",
                        fix="pass a text-format ModelServerConfig file")
    if options.model_config_file:  # syntax only, and before TensorFlow loads: a typo fails in a second
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        try:
            text_format.Parse(_read_text(options.model_config_file) or "", model_server_config_pb2.ModelServerConfig())
        except text_format.ParseError as err:
            raise FlagError(f"--model_config_file={options.model_config_file}: Error parsing text-format "
                            f"tensorflow.serving.ModelServerConfig: {err}",
                            fix="see tensorflow_serving/config/model_server_config.proto") from None
    for name in ("port", "rest_api_port"):
        if not 0 <= options.values[name] <= 65535:
            raise FlagError(f"--{name}={options.values[name]}: not a port number", fix="use 0..65535")
    if not options.model_config_file and not is_safe_model_name(options.model_name):
        raise FlagError(f"--model_name={options.model_name!r}: not a usable model name",
                        fix="use a plain name without '/' or '\\', such as --model_name=sentiment")
    if options.rest_api_max_request_bytes <= 0:
        raise FlagError(f"--rest_api_max_request_bytes={options.rest_api_max_request_bytes}: must be positive",
                        fix="e.g. --rest_api_max_request_bytes=134217728 (128 MiB, the default)")
    try:
        parse_channel_arguments(options.grpc_channel_arguments)
    except ValueError as err:
        raise FlagError(str(err), fix="use --grpc_channel_arguments=grpc.max_receive_message_length=8388608,...")
    if options.rest_api_port and options.rest_api_port == options.port:
        raise FlagError("--rest_api_port must differ from --port", fix="e.g. --port=8500 --rest_api_port=8501")


def parse_channel_arguments(text: str) -> list[tuple[str, object]]:
    """--grpc_channel_arguments: `key=value,key=value`; integer values are passed as ints (as TF Serving does)."""
    arguments = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value")
        try:
            arguments.append((key.strip(), int(value)))
        except ValueError:
            arguments.append((key.strip(), value.strip()))
    return arguments


def _prometheus_path(monitoring_config_file: str) -> str | None:
    """Reads a text-format MonitoringConfig. The pip tensorflow-serving-api ships no monitoring_config_pb2,
    and the message is tiny (`prometheus_config { enable: true path: "..." }`), so it is parsed directly."""
    if not monitoring_config_file:
        return None
    text = _read_text(monitoring_config_file)
    if text is None:
        raise FlagError(f"--monitoring_config_file={monitoring_config_file}: no such file",
                        fix="pass a text-format MonitoringConfig")
    text = re.sub(r"#[^\n]*", "", text)
    block = re.search(r"prometheus_config\s*:?\s*\{([^}]*)\}", text)
    if block is None or not re.fullmatch(r"\s*(?:(?:enable\s*:\s*(?:true|false|1|0)|path\s*:\s*\"[^\"]*\")[\s,;]*)*",
                                        block.group(1)):
        raise FlagError(f"--monitoring_config_file={monitoring_config_file}: expected "
                        'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }',
                        fix="fix the MonitoringConfig text")
    if not re.search(r"enable\s*:\s*(?:true|1)\b", block.group(1)):
        return None
    path = re.search(r'path\s*:\s*"([^"]*)"', block.group(1))
    return (path.group(1) if path else "") or "/monitoring/prometheus/metrics"


class ModelServer:
    """The running server: model manager + gRPC + optional REST. Usable in-process (tests) or from main()."""

    def __init__(self, options: Options):
        self.options = options
        self.grpc_port = 0
        self.rest_port = 0
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    def _configs(self):
        from moatkit.serving.model_manager import ModelConfig, configs_from_file

        if self.options.model_config_file:
            return configs_from_file(self.options.model_config_file)
        return [ModelConfig(name=self.options.model_name, base_path=self.options.model_base_path)]

    def start(self) -> None:
        import tensorflow as tf

        from moatkit.serving import grpc_service, rest
        from moatkit.serving.model_manager import ModelManager

        opts = self.options
        if opts.tensorflow_intra_op_parallelism:
            tf.config.threading.set_intra_op_parallelism_threads(opts.tensorflow_intra_op_parallelism)
        if opts.tensorflow_inter_op_parallelism:
            tf.config.threading.set_inter_op_parallelism_threads(opts.tensorflow_inter_op_parallelism)
        for name in sorted(opts.explicit - SUPPORTED):
            log.warning("--%s is accepted for tensorflow_model_server compatibility but has no effect here", name)
        prometheus_path = _prometheus_path(opts.monitoring_config_file)

        self.batcher = None
        if opts.enable_batching:
            from moatkit.serving.batching import BatchScheduler, load_batching_parameters

            params = load_batching_parameters(opts.batching_parameters_file)
            log.info("Batching enabled: %s", params)
            self.batcher = BatchScheduler(params)
        elif opts.batching_parameters_file:
            log.warning("--batching_parameters_file has no effect without --enable_batching")
        self.manager = ModelManager(self._configs(), poll_wait_seconds=opts.file_system_poll_wait_seconds,
                                    enable_warmup=opts.enable_model_warmup, batcher=self.batcher,
                                    prefer_tflite=opts.prefer_tflite_model or opts.use_tflite_model,
                                    check_method_names=opts.enable_signature_method_name_check,
                                    tflite_interpreters=opts.num_tflite_pools * opts.num_tflite_interpreters_per_pool,
                                    tflite_threads=opts.tensorflow_intra_op_parallelism or None)
        self.manager.start()  # like TF Serving, the initial load finishes before ports open
        self.counter = rest.RequestCounter()
        if self.batcher is not None:
            self.counter.extra_sources.append(self.batcher.prometheus_text)
        self.grpc_server, self.grpc_port, self.health = grpc_service.make_grpc_server(
            self.manager, port=opts.port, counter=self.counter, max_workers=opts.grpc_max_threads or 64,
            channel_arguments=parse_channel_arguments(opts.grpc_channel_arguments), socket_path=opts.grpc_socket_path)
        self.grpc_server.start()
        grpc_service.set_health(self.health, self.manager, serving=True)
        host = grpc_service.bind_host()
        print(f"Running gRPC ModelServer at {host}:{self.grpc_port} ...", flush=True)
        if opts.grpc_socket_path:
            print(f"Running gRPC ModelServer at UNIX socket {opts.grpc_socket_path} ...", flush=True)
        self.http_server = None
        if opts.rest_api_port:
            self.rest_api = rest.RestApi(self.manager, timeout_ms=opts.rest_api_timeout_in_ms, counter=self.counter,
                                         prometheus_path=prometheus_path)
            self.http_server = rest.make_http_server(self.rest_api, port=opts.rest_api_port,
                                                     max_request_bytes=opts.rest_api_max_request_bytes)
            self.rest_port = self.http_server.server_address[1]
            self._threads.append(rest.serve_in_thread(self.http_server))
            print(f"Exporting HTTP/REST API at:localhost:{self.rest_port} ...", flush=True)
        self._start_background()

    def _start_background(self) -> None:
        from moatkit.serving import grpc_service

        def health_loop():
            while not self._stopped.wait(1.0):
                grpc_service.set_health(self.health, self.manager, serving=True)

        def config_loop():
            path, interval = self.options.model_config_file, self.options.model_config_file_poll_wait_seconds
            last = _read_text(path)
            while not self._stopped.wait(interval):
                text = _read_text(path)
                if text is None or text == last:
                    continue
                last = text
                try:
                    self.manager.reload_config(self._configs())
                    log.info("Reloaded model config from %s", path)
                except ServerError as err:
                    log.error("Ignoring new model config: %s", err)

        loops = [health_loop]
        if self.options.model_config_file and self.options.model_config_file_poll_wait_seconds > 0:
            loops.append(config_loop)
        for loop in loops:
            thread = threading.Thread(target=loop, name=f"moat-{loop.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Graceful shutdown: refuse new connections and RPCs at once, let in-flight requests finish (for at
        most --rest_api_timeout_in_ms, the longest a REST request may run anyway), then unload the models."""
        from moatkit.serving import grpc_service

        if self._stopped.is_set():
            return
        self._stopped.set()
        grpc_service.set_health(self.health, self.manager, serving=False)
        grace = max(self.options.rest_api_timeout_in_ms / 1000, 1.0)
        if self.http_server is not None:
            self.http_server.shutdown()  # the accept loop ends ...
            self.http_server.server_close()  # ... and the listening socket closes: new connections are refused
        grpc_stopped = self.grpc_server.stop(grace=grace)  # new RPCs fail at once; running ones get `grace`
        if self.http_server is not None:
            busy = self.http_server.in_flight.count
            if busy:
                log.info("Waiting for %d in-flight REST request(s)", busy)
            if not self.http_server.in_flight.wait_idle(grace):
                log.warning("REST requests still running after %.0fs; stopping anyway", grace)
            self.rest_api.close()
        grpc_stopped.wait(grace + 1)
        self.manager.stop()
        if self.batcher is not None:
            self.batcher.stop()


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def _usage() -> str:
    lines = ["usage: moat-model-server --model_base_path=DIR [--model_name=NAME] [--port=8500] "
             "[--rest_api_port=8501] | --model_config_file=FILE", "", "flags:"]
    for name, (kind, default) in FLAGS.items():
        marker = "" if name in SUPPORTED else "   (accepted, no effect)"
        lines.append(f"  --{name}={default!r} ({kind.__name__}){marker}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    real = shutil.which("tensorflow_model_server")
    if os.environ.get("MOAT_USE_REAL_TFSERVING") == "1" and real:
        os.execv(real, [real, *argv])
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv):
        print(_usage())
        return 0
    try:
        options = parse_flags(argv)
        validate(options)
    except FlagError as err:
        print(f"moat-model-server: error: {err}", file=sys.stderr)
        return 2
    if options.version:
        import tensorflow as tf
        print(f"TensorFlow ModelServer: moat-model-server (TF Serving compatible)\nTensorFlow Library: {tf.__version__}")
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        import tensorflow_text  # noqa: F401  (registers the text ops exported models call in-graph)
    except ImportError:
        log.info("tensorflow_text is not installed; models using its ops will fail to load")

    server = ModelServer(options)
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("Received signal %d; shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except ServerError as err:
        print(f"moat-model-server: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"moat-model-server: error: {err}", file=sys.stderr)
        return 1
    while not stop.wait(0.5):
        pass
    server.stop()
    log.info("Server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
