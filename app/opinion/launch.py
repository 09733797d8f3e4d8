"""Running the monitor: the sentiment model (served by a started moat-model-server, a running one, or in-process),
the stream in its own thread, the sinks, and — for `serve` — the dashboard's HTTP server.

`run` ends with the stream (a tailed source runs until Ctrl-C) and writes report.json; `serve` keeps the dashboard
up after that until Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from moatkit.app.opinion.config import OpinionConfig
from moatkit.app.opinion.stream import Item, StreamReport, parse_time, read_files, replay_catalog, tail
from moatkit.data.core.errors import ConfigError, DataError

REPORT_FILE = "report.json"
ALIAS_REFERENCE, REFERENCE_PAIRS = "movie-dialog", 5000  # 10,000 utterances of general English


def resolve_model(config: OpinionConfig) -> tuple[Path, dict]:
    """(version dir, decision): config.model, else the newest version of adapt.name in the repository. The
    decision (scorer.sentiments' keywords) comes from the adapt report when it scored this version, else argmax."""
    from moatkit.app.opinion.adapt import REPORT_FILE as ADAPT_FILE

    if config.model:
        version_dir = Path(config.model)
    else:
        base = Path(config.repo) / config.adapt.name
        versions = sorted((p for p in base.glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
        if not versions:
            raise DataError(f"no sentiment model under '{base}'",
                            fix="run `moat opinion adapt` first, or pass --set model=PATH/TO/VERSION_DIR")
        version_dir = versions[-1]
    if not (version_dir / "saved_model.pb").is_file():
        raise DataError(f"'{version_dir}' is not a SavedModel version dir", fix="pass <repo>/<model>/<version>")
    adapt_file = Path(config.out) / ADAPT_FILE
    decision = {}
    if adapt_file.is_file():
        for scored in json.loads(adapt_file.read_text()).get("models", {}).values():
            if Path(scored["version_dir"]).resolve() == version_dir.resolve():
                decision = scored.get("decision", {})
    return version_dir.resolve(), decision


def items_of(config: OpinionConfig, report: StreamReport, stop) -> Iterator[Item | None]:
    """Every source in order: files and folders, then the catalog replay (one interleaved stream), then tails."""
    s = config.stream
    fields = {"text": s.text_field, "time": s.time_field, "source": s.source_field}
    catalogs = [spec.split(":", 1)[1] for spec in s.sources if spec.startswith("catalog:")]
    tails = [spec.split(":", 1)[1] for spec in s.sources if spec.startswith("tail:")]
    for spec in s.sources:
        if not spec.startswith(("catalog:", "tail:")):
            yield from read_files(Path(spec), report, fields)
    if catalogs:
        start = parse_time(s.start)
        if start is None:
            raise ConfigError(f"stream.start '{s.start}' is not a time", fix="e.g. 2026-01-05T00:00:00Z")
        yield from replay_catalog(catalogs, start=start, items_per_minute=s.items_per_minute, limit=s.limit,
                                  seed=s.seed, report=report)
    for path in tails:
        yield from tail(Path(path), report, fields, stop=stop)


def check_aliases(config: OpinionConfig, watchlist) -> None:
    """Each alias against general English (movie dialogue, which names no companies): one that matches more than
    alias_max_share of it is a common word, not a name. A stream that is all about one entity is fine."""
    from moatkit.data.dataset import read_records
    from moatkit.data.fetch import fetch

    reference = [t for r in read_records(fetch(ALIAS_REFERENCE))[:REFERENCE_PAIRS] for t in (r["text"], r["text_pair"])]
    watchlist.check_against(reference, max_share=config.alias_max_share)


@dataclasses.dataclass
class OpinionHandle:
    monitor: object
    report: StreamReport
    metrics: object
    finished: threading.Event
    stopped: threading.Event
    url: str | None = None
    webhook: object = None
    model: str = ""
    error: list = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def stop(self) -> None:
        self.stopped.set()

    def status(self) -> dict:
        return {**self.report.as_dict(), "running": not self.finished.is_set(),
                "error": self.error[0] if self.error else None,
                "webhook": self.webhook.status() if self.webhook else None}


def _consume(handle: OpinionHandle, config: OpinionConfig) -> None:
    """The stream thread: batches of items → monitor; a tail's idle moment flushes the batch."""
    batch, last = [], time.monotonic()
    try:
        for item in items_of(config, handle.report, stop=handle.stopped.is_set):
            if handle.stopped.is_set():
                break
            if item is not None:
                batch.append(item)
            if batch and (len(batch) >= config.stream.batch_size or (
                    item is None and time.monotonic() - last >= config.stream.idle_flush_s)):
                handle.monitor.process(batch)
                batch, last = [], time.monotonic()
        handle.monitor.process(batch)
    except Exception as err:  # noqa: BLE001  (shown on the dashboard and in the report, then raised by `run`)
        handle.error.append(f"{type(err).__name__}: {err}")
    finally:
        handle.finished.set()


@contextlib.contextmanager
def _scorer(config: OpinionConfig, version_dir: Path, stack: contextlib.ExitStack):
    """In-process, or over gRPC to config.model_server, or to a moat-model-server started for this model."""
    from moatkit.app.opinion.scorer import GrpcScorer, LocalScorer, model_labels

    if config.scoring == "local":
        yield LocalScorer(version_dir, batch_size=config.stream.batch_size)
        return
    from moatkit.app.model_server import model_config_text, tuned_flags, wait_for_models
    from moatkit.models.export import TFLITE_FILE
    from moatkit.serving.process import ServerProcess

    name = version_dir.parent.name
    address = config.model_server
    if not address:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moat-opinion-")))
        (folder / "models").write_text(model_config_text([(name, version_dir)]), encoding="utf-8")
        flags = tuned_flags(folder, batching=True, max_batch_size=config.stream.batch_size)
        if (version_dir / TFLITE_FILE).is_file():  # the quantized model adapt exports: what LocalScorer runs too
            # one single-threaded interpreter per core: two batches run side by side (measured: docs/results.md)
            flags += ("--prefer_tflite_model", f"--num_tflite_interpreters_per_pool={os.cpu_count() or 1}")
        address = stack.enter_context(ServerProcess(model_config_file=folder / "models", extra_flags=flags)).grpc_address
    wait_for_models(address, [(name, int(version_dir.name))], 120.0)
    scorer = GrpcScorer(address, name, model_labels(version_dir), batch_size=max(1, config.stream.batch_size // 4))
    try:
        yield scorer
    finally:
        scorer.close()


@contextlib.contextmanager
def start_opinion(config: OpinionConfig, *, http: bool):
    """Starts the stream (and, with http, the dashboard; port 0 picks a free one) and yields an OpinionHandle; the
    block's end stops the stream and everything started."""
    from moatkit.app.opinion.alerting import OpinionMetrics, Webhook
    from moatkit.app.opinion.monitor import OpinionMonitor
    from moatkit.app.opinion.watchlist import load_watchlist

    config.validate()
    watchlist = load_watchlist(config.watchlist, bare_tickers=config.bare_tickers)
    check_aliases(config, watchlist)
    version_dir, decision = resolve_model(config)
    with contextlib.ExitStack() as stack:
        scorer = stack.enter_context(_scorer(config, version_dir, stack))
        metrics = OpinionMetrics()
        metrics.prepare(watchlist.names)
        webhook = Webhook(config.webhook, on_failure=metrics.webhook_failures.inc) if config.webhook else None
        monitor = OpinionMonitor(watchlist, scorer, config.detect, out_dir=config.out, decision=decision,
                                 on_alert=[metrics.alert] + ([webhook] if webhook else []))
        monitor.on_batch += [metrics.observe, lambda rows: metrics.base_shares(monitor)]
        stack.callback(monitor.close)
        if webhook:
            stack.callback(webhook.close)
        handle = OpinionHandle(monitor=monitor, report=StreamReport(), metrics=metrics, finished=threading.Event(),
                               stopped=threading.Event(), webhook=webhook, model=str(version_dir))
        thread = threading.Thread(target=_consume, args=(handle, config), name="opinion-stream", daemon=True)
        thread.start()
        stack.callback(thread.join, 30)
        stack.callback(handle.stopped.set)
        if http:
            from moatkit.app.opinion.service import OpinionApi, make_dashboard_server
            from moatkit.serving.rest import serve_in_thread

            api = OpinionApi(monitor, stream_status=handle.status, registry=metrics.registry)
            server = make_dashboard_server(api, port=config.port, host=config.host)
            stack.callback(server.server_close)
            server_thread = serve_in_thread(server)
            stack.callback(server_thread.join, 10)
            stack.callback(server.shutdown)
            handle.url = f"http://{config.host}:{server.server_address[1]}/"
        yield handle


def write_report(handle: OpinionHandle, config: OpinionConfig) -> dict:
    report = {"model": handle.model, "stream": handle.status(), **handle.monitor.summary(),
              "alerts": len(handle.monitor.alerts), "seconds": round(time.monotonic() - handle.started, 2),
              "config": dataclasses.asdict(config)}
    out = Path(config.out)
    (out / (REPORT_FILE + ".tmp")).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / (REPORT_FILE + ".tmp")).replace(out / REPORT_FILE)
    return report


def _wait(handle: OpinionHandle, *, until_finished: bool) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: handle.stop())  # else the started model server would outlive us
    with contextlib.suppress(KeyboardInterrupt):
        while not handle.stopped.wait(0.2):
            if until_finished and handle.finished.is_set():
                break


def run_opinion(config: OpinionConfig, *, log=print) -> dict:
    """`moat opinion run`: the stream to its end (or Ctrl-C), then report.json."""
    with start_opinion(config, http=False) as handle:
        log(f"opinion: scoring {config.stream.sources} with {handle.model}; alerts → {config.out}")
        _wait(handle, until_finished=True)
        handle.stop()
        handle.finished.wait(30)
        report = write_report(handle, config)
    if handle.error:
        raise DataError(f"the stream stopped: {handle.error[0]}", fix="see report.json in " + config.out)
    return report


def serve_opinion(config: OpinionConfig, *, ready=None, log=print) -> dict:
    """`moat opinion serve`: the dashboard at config.host:port while the stream runs, and after, until Ctrl-C."""
    with start_opinion(config, http=True) as handle:
        log(f"opinion dashboard at {handle.url} (model {handle.model}); Ctrl-C stops")
        if ready is not None:
            ready(handle)
        _wait(handle, until_finished=False)
        report = write_report(handle, config)
    log("opinion dashboard stopped")
    return report
