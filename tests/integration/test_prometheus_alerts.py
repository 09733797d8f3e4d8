"""serving/deploy/prometheus/ and serving/deploy/grafana/: the alerting rules, the example scrape config and the
dashboard, checked by promtool and by a real Prometheus (the Debian `prometheus` package; `make test` installs it)
that scrapes a live moat-model-server and a monitor metrics target and evaluates the shipped rule file.

Everything binds 127.0.0.1 only; every process started here is ended in its fixture's teardown.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import portpicker
import pytest
import yaml

from moatkit.serving.process import ServerProcess

# No TensorFlow in this process (that import alone takes seconds): the server serves TF Serving's own testdata model.
HALF_PLUS_TWO = (Path(__file__).resolve().parents[1] / "third_party" / "tensorflow_serving" / "tensorflow_serving"
                 / "servables" / "tensorflow" / "testdata" / "saved_model_half_plus_two_cpu")
DEPLOY = Path(__file__).resolve().parents[2] / "serving" / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES = PROMETHEUS_DIR / "moat-rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "moat-rules.test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "moat-monitoring.json"
MONITORING_CONFIG = DEPLOY / "config" / "monitoring.config"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
_MISSING = "not installed: `make prometheus` (as root) installs the Debian package `prometheus`"
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=f"promtool {_MISSING}")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason=f"prometheus {_MISSING}")

ALERTS = {"MoatDriftDetected", "MoatEstimatedAccuracyDrop", "MoatRealisedAccuracyDrop", "MoatMonitorStale",
          "MoatMonitorDown", "MoatServerErrors"}
DETECTORS = ("input_length", "input_oov", "input_language", "input_garbage", "prediction_class",
             "prediction_confidence", "embedding_mmd")
MODEL, VERSION = "sentiment", "1"  # the labels the monitor target reports
SERVED = "half"                    # the model moat-model-server serves here


def wait_for(predicate, *, timeout: float, what: str, interval: float = 0.1):
    """Polls `predicate()` until it returns a truthy value (returned); AssertionError after `timeout` seconds."""
    deadline, last_error = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except Exception as err:  # noqa: BLE001  (not ready yet)
            last_error = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")


def _promtool(*args: str) -> str:
    result = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


# === promtool on the shipped files ===

@needs_promtool
def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    assert "SUCCESS: 6 rules found" in _promtool("check", "rules", RULES.name)
    assert "SUCCESS" in _promtool("test", "rules", RULE_TESTS.name)
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} == ALERTS
    drift = next(rule for rule in rules if rule["alert"] == "MoatDriftDetected")
    assert drift["labels"]["severity"] == "warning" and "moat monitor report" in drift["annotations"]["description"]
    # the unit tests cover the drift alert both firing and not firing
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    drift_cases = [case for test in tests for case in test["alert_rule_test"]
                   if case["alertname"] == "MoatDriftDetected"]
    assert any(case["exp_alerts"] for case in drift_cases) and any(not case["exp_alerts"] for case in drift_cases)


@needs_promtool
def test_promtool_checks_the_example_config():
    output = _promtool("check", "config", CONFIG.name)
    assert "is valid prometheus config file syntax" in output and "SUCCESS: 6 rules found" in output
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["moat-model-server"]["metrics_path"] == "/monitoring/prometheus/metrics"
    assert jobs["moat-model-server"]["static_configs"][0]["targets"][0].endswith(":8501")
    assert jobs["moat-monitor"]["static_configs"][0]["targets"][0].endswith(":9464")
    assert config["rule_files"] == [RULES.name]


def test_grafana_dashboard_panels_use_the_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}
    assert {"Drift alarm", "Drift p-values per detector", "Estimated vs realised vs reference accuracy",
            "Texts per window", "Server request rate", "Server error rate"} <= set(panels)
    for panel in panels.values():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
    p_values = panels["Drift p-values per detector"]["fieldConfig"]["defaults"]["custom"]["scaleDistribution"]
    assert p_values == {"type": "log", "log": 10}
    accuracy = " ".join(t["expr"] for t in panels["Estimated vs realised vs reference accuracy"]["targets"])
    for gauge in ("estimated_accuracy", "estimated_accuracy_lower", "realised_accuracy", "reference_accuracy"):
        assert f"moat_monitor_{gauge}{{" in accuracy


# === a real Prometheus ===

_TARGET = textwrap.dedent('''
    """The monitor's Prometheus gauges with fixed healthy values; the drift alarm is read from a file per scrape."""
    import sys, time
    from pathlib import Path
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    port, alarm_file = int(sys.argv[1]), Path(sys.argv[2])
    DETECTORS = sys.argv[3].split(",")
    LABELS, MODEL = ["model", "version"], (sys.argv[4], sys.argv[5])
    registry = CollectorRegistry()

    def alarm() -> float:
        try:
            return float(alarm_file.read_text().strip() or 0)
        except FileNotFoundError:
            return 0.0

    def gauge(name, value, labels=LABELS, values=MODEL):
        g = Gauge(name, name, labels, registry=registry)
        g.labels(*values).set_function(value if callable(value) else (lambda: value))

    gauge("moat_monitor_drift_alarm", alarm)
    p_value = Gauge("moat_monitor_drift_p_value", "p", LABELS + ["detector"], registry=registry)
    for detector in DETECTORS:
        p_value.labels(*MODEL, detector).set_function(
            lambda d=detector: 1e-6 if alarm() and d in ("input_length", "prediction_class") else 0.4)
    gauge("moat_monitor_estimated_accuracy", 0.90)
    gauge("moat_monitor_estimated_accuracy_lower", 0.87)
    gauge("moat_monitor_realised_accuracy", 0.89)
    gauge("moat_monitor_reference_accuracy", 0.91)
    gauge("moat_monitor_window_texts", 200)
    gauge("moat_monitor_last_window_timestamp_seconds", time.time)
    Counter("moat_monitor_texts", "texts", LABELS, registry=registry).labels(*MODEL).inc(1000)
    Counter("moat_monitor_log_records", "records", ["outcome"], registry=registry).labels("ok").inc(1000)
    start_http_server(port, addr="127.0.0.1", registry=registry)
    print("serving", flush=True)
    while True:
        time.sleep(3600)
''')


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()


def _post_json(url: str, body: dict, timeout: float = 30.0) -> tuple[int, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def monitor_metrics_target(tmp_path_factory):
    """A metrics endpoint with the `moat monitor follow` gauge contract, on 127.0.0.1.

    Yields (port, set_alarm): set_alarm(True/False) makes every later scrape report moat_monitor_drift_alarm
    {model="sentiment", version="1"} 1/0. For now a prometheus_client subprocess with fixed values; swap in the
    real follower here (same yield) once it exists."""
    pytest.importorskip("prometheus_client")
    root = tmp_path_factory.mktemp("monitor_target")
    script, alarm_file = root / "target.py", root / "alarm"
    script.write_text(_TARGET)
    port = portpicker.pick_unused_port()

    def set_alarm(on: bool) -> None:
        partial = alarm_file.with_suffix(".tmp")
        partial.write_text("1" if on else "0")
        os.replace(partial, alarm_file)  # a scrape never reads a half-written file

    set_alarm(False)
    log = open(root / "target.log", "w")
    process = subprocess.Popen([sys.executable, str(script), str(port), str(alarm_file), ",".join(DETECTORS),
                                MODEL, VERSION], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: process.poll() is None and _get(f"http://127.0.0.1:{port}/metrics")[0] == 200,
                 timeout=30, what=f"the monitor metrics target ({root / 'target.log'})")
        yield port, set_alarm
    finally:
        _stop(process)
        log.close()


@pytest.fixture(scope="module")
def model_server():
    """moat-model-server (half_plus_two) with the shipped monitoring config: Prometheus text on the REST port."""
    server = ServerProcess(model_name=SERVED, model_base_path=HALF_PLUS_TWO, timeout=120,
                           extra_flags=(f"--monitoring_config_file={MONITORING_CONFIG}",)).start()
    try:
        yield server
    finally:
        server.stop()


class Prometheus:
    def __init__(self, port: int, log: Path):
        self.url, self.log = f"http://127.0.0.1:{port}", log

    def api(self, path: str, **params) -> object:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, text = _get(f"{self.url}/api/v1/{path}{query}")
        body = json.loads(text)
        assert status == 200 and body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def alerts(self, name: str) -> list[dict]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def rules(self) -> dict[str, dict]:
        return {rule["name"]: rule for group in self.api("rules")["groups"] for rule in group["rules"]}

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, monitor_metrics_target, model_server):
    """The apt prometheus on a free 127.0.0.1 port: the shipped prometheus.yml with 1 s intervals, its targets
    pointed at the two fixtures, and the shipped rule file."""
    if PROMETHEUS is None:
        pytest.skip(f"prometheus {_MISSING}")
    root = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    config.pop("alerting", None)  # no Alertmanager here
    targets = {"moat-model-server": model_server.rest_address, "moat-monitor": f"127.0.0.1:{monitor_metrics_target[0]}"}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = portpicker.pick_unused_port()
    log_path = root / "prometheus.log"
    log = open(log_path, "w")
    process = subprocess.Popen([PROMETHEUS, f"--config.file={root / 'prometheus.yml'}",
                                f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(port, log_path)
    try:
        wait_for(lambda: process.poll() is None and _get(f"{server.url}/-/ready")[0] == 200, timeout=30,
                 what=f"prometheus to be ready ({log_path})")
        up = wait_for(lambda: (lambda r: len(r) == 2 and all(s["value"][1] == "1" for s in r) and r)(
            server.query("up")), timeout=20, what="both targets to be scraped and up")
        assert {s["metric"]["job"] for s in up} == set(targets)
        yield server
    finally:
        _stop(process)
        log.close()


@needs_prometheus
def test_drift_alert_goes_from_inactive_to_firing_and_back(prometheus, monitor_metrics_target):
    _, set_alarm = monitor_metrics_target
    set_alarm(False)
    wait_for(lambda: [s for s in prometheus.query("moat_monitor_drift_alarm") if s["value"][1] == "0"],
             timeout=10, what="a scrape with the alarm at 0")
    # every shipped rule evaluates without error, and after a further evaluation nothing fires on healthy gauges
    seen = wait_for(lambda: (lambda r: set(r) == ALERTS and all(x["lastEvaluation"][:4] != "0001" for x in r.values())
                             and r)(prometheus.rules()), timeout=10, what="all rules to be evaluated")
    rules = wait_for(lambda: (lambda r: r["MoatDriftDetected"]["lastEvaluation"] != seen["MoatDriftDetected"][
        "lastEvaluation"] and r)(prometheus.rules()), timeout=10, what="another rule evaluation")
    assert {name: rule["health"] for name, rule in rules.items()} == dict.fromkeys(ALERTS, "ok"), rules
    assert rules["MoatDriftDetected"]["state"] == "inactive"
    assert prometheus.api("alerts")["alerts"] == []

    set_alarm(True)
    firing = wait_for(lambda: [a for a in prometheus.alerts("MoatDriftDetected") if a["state"] == "firing"],
                      timeout=15, what=f"MoatDriftDetected to fire\n{prometheus.log_tail()}")
    assert len(firing) == 1
    labels, annotations = firing[0]["labels"], firing[0]["annotations"]
    assert (labels["model"], labels["version"], labels["severity"], labels["job"]) == (
        MODEL, VERSION, "warning", "moat-monitor")
    assert f"model {MODEL} version {VERSION}" in annotations["summary"]
    assert "moat monitor report" in annotations["description"]
    assert prometheus.rules()["MoatDriftDetected"]["state"] == "firing"
    # the p-values the dashboard plots: one series per detector, the drifted ones tiny
    p_values = {s["metric"]["detector"]: float(s["value"][1]) for s in prometheus.query(
        f'moat_monitor_drift_p_value{{model="{MODEL}"}}')}
    assert set(p_values) == set(DETECTORS) and p_values["input_length"] < 0.01
    # no other alert fires alongside
    assert {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]} == {"MoatDriftDetected"}

    set_alarm(False)
    wait_for(lambda: not prometheus.alerts("MoatDriftDetected"), timeout=15, what="MoatDriftDetected to resolve")


@needs_prometheus
def test_prometheus_scrapes_the_model_servers_request_count(prometheus, model_server):
    status, body = _post_json(f"http://{model_server.rest_address}/v1/models/{SERVED}:predict",
                              {"instances": [1.0, 2.0]})
    assert (status, body) == (200, {"predictions": [2.5, 3.0]})
    series = wait_for(lambda: [s for s in prometheus.query('{__name__=":tensorflow:serving:request_count"}')
                               if s["metric"].get("model_name") == SERVED and s["metric"].get("status") == "OK"
                               and float(s["value"][1]) >= 1], timeout=15,
                      what=":tensorflow:serving:request_count in Prometheus")
    assert series[0]["metric"]["job"] == "moat-model-server"
    target = next(t for t in prometheus.api("targets")["activeTargets"] if t["labels"]["job"] == "moat-model-server")
    assert target["scrapeUrl"].endswith("/monitoring/prometheus/metrics") and target["health"] == "up"


@needs_prometheus
def test_every_dashboard_query_is_valid_promql(prometheus):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(exprs) >= 10
    variables = {"$model": ".*", "$version": ".*", "$__rate_interval": "1m"}
    for expr in exprs:
        if expr.startswith("label_values("):  # a Grafana function, not PromQL: check its selector
            expr = re.fullmatch(r"label_values\((.*), *\w+\)", expr).group(1)
        for name, value in variables.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, expr
        prometheus.query(expr)  # asserts status success (a PromQL syntax error is a 400)
    # the panels' data is there: the alarm, the accuracy gauges and the server's request rate
    assert prometheus.query('max by (model, version) (moat_monitor_drift_alarm{model=~".*"})')
    assert prometheus.query("moat_monitor_reference_accuracy")
