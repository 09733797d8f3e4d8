"""Running the chat service: a moat-model-server child for the build's two models (unless `serve.model_server`
names a running one), the gRPC clients, and the HTTP server around `SupportApi` (service.py)."""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import tempfile
import threading
from pathlib import Path

from moatkit.app.model_server import model_config_text, tuned_flags, wait_for_models
from moatkit.app.support.config import ServeConfig
from moatkit.app.support.service import LOG_FILE, SupportApi


def _version_dir(out_dir: Path, spec: dict) -> Path:
    from moatkit.data.core.errors import DataError

    path = Path(spec["dir"]).expanduser()
    if not path.is_absolute() and not path.is_dir():
        path = out_dir / path
    if not path.is_dir():
        raise DataError(f"the build in '{out_dir}' serves {spec['name']} from '{spec['dir']}', which does not "
                        "exist", fix="rebuild with `moat support build` (or restore the model repository)")
    return path.resolve()


def _models(out_dir: Path, built: dict) -> list[tuple[str, Path]]:
    """(name, version dir) of the build's encoder and router."""
    return [(built[role]["name"], _version_dir(out_dir, built[role])) for role in ("encoder", "router") if built.get(role)]


@dataclasses.dataclass
class SupportHandle:
    url: str
    port: int
    api: SupportApi
    model_server: str
    log_path: Path
    out_dir: Path
    stopped: threading.Event = dataclasses.field(default_factory=threading.Event)

    def stop(self) -> None:
        """Ends `serve_support`'s wait (a `start_support` block stops when it exits)."""
        self.stopped.set()


@contextlib.contextmanager
def start_support(out_dir: str | Path, config: ServeConfig, *, model_timeout_s: float = 120.0):
    """Serves the build in `out_dir` until the block exits: yields a SupportHandle (port 0 picks a free one)."""
    from moatkit.app.support.assistant import Assistant, read_support_file
    from moatkit.app.support.models import GrpcModels
    from moatkit.serving.process import ServerProcess
    from moatkit.serving.rest import make_http_server, serve_in_thread

    out_dir = Path(out_dir)
    built = read_support_file(out_dir)
    with contextlib.ExitStack() as stack:
        address = config.model_server
        if address is None:
            config_file = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moat-support-"))) / "models"
            config_file.write_text(model_config_text(_models(out_dir, built)), encoding="utf-8")
            flags = tuned_flags(config_file.parent, batching=config.batching)
            address = stack.enter_context(ServerProcess(model_config_file=config_file, extra_flags=flags)).grpc_address
        wait_for_models(address, [(name, int(path.name)) for name, path in _models(out_dir, built)], model_timeout_s)
        models = GrpcModels(address, encoder=built["encoder"]["name"], router=(built.get("router") or {}).get("name"),
                            labels=built.get("labels"), timeout_s=config.timeout_s)
        stack.callback(models.close)
        log_path = Path(config.log_dir) / LOG_FILE
        api = SupportApi(Assistant.from_build(out_dir, models), config, log_path=log_path)
        stack.callback(api.close)
        http = make_http_server(api, port=config.port, host=config.host, max_request_bytes=config.max_request_bytes)
        stack.callback(http.server_close)
        thread = serve_in_thread(http)
        stack.callback(thread.join, 10)
        stack.callback(http.in_flight.wait_idle, 10.0)  # turns under way still write the event log
        stack.callback(http.shutdown)
        port = http.server_address[1]
        yield SupportHandle(url=f"http://{config.host}:{port}/", port=port, api=api, model_server=address,
                            log_path=log_path, out_dir=out_dir)


def serve_support(out_dir: str | Path, config: ServeConfig, *, ready=None, log=print) -> None:
    """Serves until Ctrl-C, SIGTERM or `handle.stop()`; `ready(handle)` is called once the page is up."""
    with start_support(out_dir, config) as handle:
        log(f"support chat at {handle.url} (models: {handle.model_server}; events: {handle.log_path}); "
            "Ctrl-C stops")
        if threading.current_thread() is threading.main_thread():
            # without this a SIGTERM would end the process here and leave the started model server running
            signal.signal(signal.SIGTERM, lambda *_: handle.stop())
        if ready is not None:
            ready(handle)
        with contextlib.suppress(KeyboardInterrupt):
            handle.stopped.wait()
        log("support chat stopped")
