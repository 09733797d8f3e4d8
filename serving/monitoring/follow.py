"""`moat monitor follow`: tails the server's logs, evaluates each new window, and publishes the results as
Prometheus gauges (prometheus_client, on 127.0.0.1:metrics_port/metrics) and TensorBoard scalars (out/).
The gauge names are the contract of serving/deploy/prometheus/moat-rules.yml and the Grafana dashboard."""
from __future__ import annotations

import os
import time
from pathlib import Path

from moatkit.serving.monitoring.config import MonitorConfig
from moatkit.serving.monitoring.monitor import Monitor

PREFIX = "moat_monitor_"


class Gauges:
    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry or CollectorRegistry()
        labels = ["model", "version"]

        def gauge(name, doc, extra=()):
            return Gauge(PREFIX + name, doc, [*labels, *extra], registry=self.registry)

        self.alarm = gauge("drift_alarm", "1 when the last evaluated window raised a drift alarm")
        self.p_value = gauge("drift_p_value", "p-value of a drift test on the last window", ("detector",))
        self.level = gauge("drift_alarm_level", "the per-test significance level (alpha / tests)")
        self.estimated = gauge("estimated_accuracy", "label-free accuracy estimate of the last window")
        self.estimated_lower = gauge("estimated_accuracy_lower", "lower end of its 95 % interval")
        self.realised = gauge("realised_accuracy", "accuracy on the last window's texts that have feedback labels")
        self.reference = gauge("reference_accuracy", "dev accuracy in the version's reference profile")
        self.window_texts = gauge("window_texts", "texts in the last evaluated window")
        self.last_window = gauge("last_window_timestamp_seconds", "when the last window was evaluated")
        self.texts = Counter(PREFIX + "texts", "logged texts read", labels, registry=self.registry)
        self.records = Counter(PREFIX + "log_records", "log records read, by outcome", ["outcome"],
                               registry=self.registry)

    def publish(self, model: str, window: dict, monitor) -> None:
        labels = dict(model=model, version=str(window["version"]))
        self.alarm.labels(**labels).set(1.0 if window["confirmed_alarm"] else 0.0)
        for name, test in window["tests"].items():
            self.p_value.labels(**labels, detector=name).set(test["p_value"])
        self.level.labels(**labels).set(window["level"])
        if "estimate" in window:
            self.estimated.labels(**labels).set(window["estimate"]["estimated_accuracy"])
            self.estimated_lower.labels(**labels).set(window["estimate"]["interval"][0])
        if window.get("realised", {}).get("accuracy") is not None:
            self.realised.labels(**labels).set(window["realised"]["accuracy"])
        reference = (monitor.profile.get("calibration") or {}).get("dev_accuracy")
        if reference is not None:
            self.reference.labels(**labels).set(reference)
        self.window_texts.labels(**labels).set(window["n"])
        self.last_window.labels(**labels).set(time.time())


def follow(config: MonitorConfig, *, log=print, stop=lambda: False) -> dict:
    """Polls until interrupted, `max_seconds` pass, or `stop()` is true. Returns the counts so far."""
    import tensorflow as tf
    from prometheus_client import start_http_server

    if config.nice:
        os.nice(config.nice)
        # one TensorFlow thread: beside a busy server, more only spin against its threads (measured: the cost of
        # logging 1.0 + follow at 16 REST clients fell from about 18 % to about 9 % with this and a 0.25 sample)
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    monitor = Monitor(config, keep_rows=False)
    gauges = Gauges()
    if config.metrics_port:
        server, _ = start_http_server(config.metrics_port, addr="127.0.0.1", registry=gauges.registry)
        log(f"Prometheus gauges at http://127.0.0.1:{server.server_port}/metrics")
    writer = tf.summary.create_file_writer(str(Path(config.out) / "follow"))
    started, seen, counted = time.time(), {}, {}
    log(f"following {config.logs} for model {config.model} (window {config.window}, step {config.step})")
    try:
        while not stop() and not (config.max_seconds and time.time() - started > config.max_seconds):
            windows = monitor.poll()
            counts = monitor.reader.counts
            for outcome, value in counts.items():
                if value > counted.get(outcome, 0):
                    gauges.records.labels(outcome=outcome).inc(value - counted.get(outcome, 0))
                    counted[outcome] = value
            for version, vm in monitor.versions.items():
                gauges.texts.labels(model=config.model, version=str(version)).inc(vm.total - seen.get(version, 0))
                seen[version] = vm.total
            for window in windows:
                vm = monitor.versions[window["version"]]
                gauges.publish(config.model, window, vm)
                _scalars(writer, window, step=window["end"])
                if window["confirmed_alarm"]:
                    log(f"version {window['version']}: drift alarm after {window['end']} texts "
                        f"({', '.join(window['drifted'])})")
            if not windows:
                time.sleep(config.poll_seconds)
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()
    return dict(monitor.reader.counts)


def _scalars(writer, window: dict, *, step: int) -> None:
    import tensorflow as tf

    version = window["version"]
    with writer.as_default(step=step):
        tf.summary.scalar(f"v{version}/drift_alarm", float(window["confirmed_alarm"]))
        for name, test in window["tests"].items():
            tf.summary.scalar(f"v{version}/p_value/{name}", test["p_value"])
        if "estimate" in window:
            tf.summary.scalar(f"v{version}/estimated_accuracy", window["estimate"]["estimated_accuracy"])
        if window.get("realised", {}).get("accuracy") is not None:
            tf.summary.scalar(f"v{version}/realised_accuracy", window["realised"]["accuracy"])
    writer.flush()
