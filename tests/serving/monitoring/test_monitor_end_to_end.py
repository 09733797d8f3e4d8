"""`moat monitor` on a real fine-tuned MiniLM served by moat-model-server with request logging: the profile
written beside the SavedModel, a REST stream that shifts from MR to amazon snippets, the report (alarm after the
shift, none before, realised accuracy exact), `follow`'s Prometheus gauges, and bad input as one line."""
import json
import shutil
import threading
import time
import urllib.request

import numpy as np
import pytest

from moatkit.app.cli import main
from moatkit.data.dataset import read_records, write_dataset
from moatkit.serving import client
from moatkit.serving.monitoring.config import MonitorConfig
from moatkit.serving.monitoring.follow import follow
from moatkit.serving.monitoring.profile import PROFILE_FILE, read_profile
from moatkit.serving.monitoring.report import run_report
from moatkit.serving.process import ServerProcess, free_port
from tests.serving.monitoring.test_monitor_logs import predict_record, write

IN_DOMAIN, SHIFTED, BATCH = 200, 200, 10


@pytest.fixture(scope="module")
def profiled(small_export, small_run, tmp_path_factory):
    """A copy of the small export with its reference profile (from the fine-tune's dev split)."""
    from moatkit.app.monitor_profile import profile_from_data

    repo = tmp_path_factory.mktemp("monitor_repo")
    version_dir = repo / "sentiment" / "1"
    shutil.copytree(small_export["version_dir"], version_dir)
    profile_from_data(version_dir, small_run["split_dir"])
    return repo, version_dir


@pytest.fixture(scope="module")
def logged(profiled, small_run, mr_dir, tmp_path_factory):
    """200 MR test sentences then 200 amazon snippets through REST, logged at sampling 1.0; the labels as feedback."""
    from moatkit.data.fetch import fetch

    repo, _ = profiled
    work = tmp_path_factory.mktemp("monitor_logs")
    rng = np.random.default_rng(0)
    mr = read_records(f"{small_run['split_dir']}/test")
    amazon = read_records(fetch("amazon"))
    rows = [mr[i] for i in rng.choice(len(mr), IN_DOMAIN, replace=False)] + \
           [amazon[i] for i in rng.choice(len(amazon), SHIFTED, replace=False)]
    config = work / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "sentiment" base_path: "{repo / "sentiment"}" '
                      f'model_platform: "tensorflow" logging_config {{ log_collector_config {{ type: "file" '
                      f'filename_prefix: "{work / "logs" / "sentiment"}" }} sampling_config {{ sampling_rate: 1.0 }} '
                      f'}} }} }}')
    predictions = []
    with ServerProcess(model_config_file=config) as server:
        for start in range(0, len(rows), BATCH):
            answer = client.rest_predict(server.rest_address, "sentiment",
                                         [r["text"] for r in rows[start:start + BATCH]])
            predictions.extend(p["label"] for p in answer["predictions"])
    write(work / "logs" / "sentiment.999.1.tfrecord", [predict_record(["old version"], [[0.5, 0.5]], version=7)])
    feedback = work / "feedback.jsonl"
    feedback.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows)
                        + json.dumps({"text": "x", "label": "neutral"}) + "\n")
    return work, rows, predictions, feedback


def test_profile_is_written_beside_the_saved_model(profiled, small_run):
    _, version_dir = profiled
    profile = read_profile(version_dir)
    dev = read_records(f"{small_run['split_dir']}/dev")
    assert (version_dir / PROFILE_FILE).is_file() and profile["labels"] == ["negative", "positive"]
    assert profile["texts"] == len(dev) == sum(profile["inputs"]["histograms"]["length"])
    assert sum(profile["predictions"]["class_counts"]) == len(dev)
    assert profile["embeddings"]["values"].shape == (min(1000, len(dev)), 384)
    assert 0.65 < profile["calibration"]["dev_accuracy"] < 0.95 and profile["calibration"]["temperature"] > 0


def test_report_alarms_after_the_shift_and_realised_accuracy_is_exact(profiled, logged, tmp_path):
    repo, _ = profiled
    work, rows, predictions, feedback = logged
    report = run_report(MonitorConfig(repo=str(repo), logs=[str(work / "logs")], feedback=str(feedback),
                                      out=str(tmp_path), window=100, step=50, permutations=200), log=lambda *_: None)
    assert json.loads((tmp_path / "report.json").read_text())["texts"] == report["texts"]
    assert report["texts"] == {"logged": 401, "monitored": 400, "skipped_unmonitored_versions": {"7": 1}}
    assert "no reference profile" in report["unmonitored_versions"]["7"]
    assert report["log_records"]["records"] == 41 and report["log_records"]["records_parsed"] == 41
    version = report["versions"]["1"]
    assert version["windows"] == 7  # windows end at 100, 150, …, 400
    windows = version["window_results"]
    assert not any(w["confirmed_alarm"] for w in windows if w["end"] <= IN_DOMAIN)
    assert version["first_alarm"] is not None and IN_DOMAIN < version["first_alarm"]["after_texts"] <= 400
    for window in windows:  # realised accuracy = the server's answers vs the feedback labels, exactly
        picked = range(window["end"] - window["n"], window["end"])
        correct = sum(predictions[i] == rows[i]["label"] for i in picked)
        assert window["realised"] == {"labelled": 100, "correct": correct, "accuracy": correct / 100}
    assert version["feedback"]["skipped_unknown_label"] == 1 and version["feedback"]["unknown_labels"] == ["neutral"]
    assert len(version["ood_texts"]) == 10
    page = (tmp_path / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 3 and "Most out-of-distribution" in page


def test_follow_publishes_prometheus_gauges(profiled, logged, tmp_path):
    repo, _ = profiled
    work, *_ = logged
    port = free_port()
    config = MonitorConfig(repo=str(repo), logs=[str(work / "logs")], out=str(tmp_path), window=100, step=50,
                           permutations=200, metrics_port=port, poll_seconds=0.2, nice=0)
    done = threading.Event()
    thread = threading.Thread(target=follow, args=(config,), kwargs=dict(log=lambda *_: None, stop=done.is_set))
    thread.start()
    try:
        deadline, page = time.time() + 120, ""
        while time.time() < deadline and 'moat_monitor_texts_total{model="sentiment",version="1"} 400.0' not in page:
            time.sleep(0.5)
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
    finally:
        done.set()
        thread.join(timeout=60)
    assert 'moat_monitor_texts_total{model="sentiment",version="1"} 400.0' in page
    assert 'moat_monitor_drift_alarm{model="sentiment",version="1"}' in page  # firing: the Prometheus test below
    assert 'moat_monitor_drift_p_value{detector="embedding_mmd",model="sentiment",version="1"}' in page
    assert 'moat_monitor_log_records_total{outcome="skipped_other_model"}' not in page
    assert list((tmp_path / "follow").glob("events.out.tfevents.*"))


def test_bad_input_is_one_line(profiled, tmp_path, capsys):
    repo, _ = profiled
    assert main(["monitor", "report", "--set", f"repo={tmp_path}", "--set", f"out={tmp_path}"]) == 2
    assert "model base path" in capsys.readouterr().err
    assert main(["monitor", "report", "--set", f"repo={repo}", "--set", "window=5"]) == 2
    assert "at least 20" in capsys.readouterr().err
    assert main(["monitor", "report", "--set", f"repo={repo}", "--set", f"feedback={tmp_path}/none.jsonl"]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    assert main(["monitor", "report", "--set", f"repo={repo}", "--set", f"logs=[{empty}]",
                 "--set", f"out={tmp_path / 'out'}"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["warnings"] == [f"no log files matched ['{empty}']"] and report["texts"]["logged"] == 0


def test_real_follow_makes_a_real_prometheus_fire_the_drift_alert(profiled, logged, tmp_path):
    """logs → `follow` → Prometheus (the apt binary, the shipped rule file) → MoatDriftDetected firing."""
    import subprocess

    import tensorflow as tf
    import yaml

    from tests.integration import test_prometheus_alerts as prom

    if prom.PROMETHEUS is None:
        pytest.skip("prometheus is not installed: `make prometheus` (as root) installs it")
    repo, _ = profiled
    work, *_ = logged
    records = [r.numpy() for f in sorted((work / "logs").glob("sentiment.*.tfrecord"))
               for r in tf.data.TFRecordDataset(str(f))]
    in_domain = IN_DOMAIN // BATCH  # the first 20 records hold the MR sentences
    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs / "sentiment.1.1.tfrecord", records[:in_domain])
    monitor_port, prometheus_port = free_port(), free_port()
    config = MonitorConfig(repo=str(repo), logs=[str(logs)], out=str(tmp_path), window=100, step=50,
                           permutations=200, metrics_port=monitor_port, poll_seconds=0.2, nice=0)
    done = threading.Event()
    thread = threading.Thread(target=follow, args=(config,), kwargs=dict(log=lambda *_: None, stop=done.is_set))
    scrape = yaml.safe_load(prom.CONFIG.read_text())
    scrape["rule_files"] = [str(prom.RULES)]
    scrape["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    scrape.pop("alerting", None)
    scrape["scrape_configs"] = [dict(job, static_configs=[{"targets": [f"127.0.0.1:{monitor_port}"]}])
                                for job in scrape["scrape_configs"] if job["job_name"] == "moat-monitor"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    log = open(tmp_path / "prometheus.log", "w")
    thread.start()
    process = subprocess.Popen([prom.PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
                               stdout=log, stderr=subprocess.STDOUT)
    server = prom.Prometheus(prometheus_port, tmp_path / "prometheus.log")
    try:
        prom.wait_for(lambda: [s for s in server.query('moat_monitor_drift_alarm{model="sentiment"}')
                               if s["value"][1] == "0"], timeout=90, what="the in-domain windows, alarm 0")
        assert server.rules()["MoatDriftDetected"]["state"] == "inactive"
        write(logs / "sentiment.2.2.tfrecord", records[in_domain:])  # the traffic moves to amazon
        firing = prom.wait_for(lambda: [a for a in server.alerts("MoatDriftDetected") if a["state"] == "firing"],
                               timeout=120, what="MoatDriftDetected to fire")
        assert firing[0]["labels"]["model"] == "sentiment" and firing[0]["labels"]["version"] == "1"
    finally:
        done.set()
        thread.join(timeout=60)
        prom._stop(process)
        log.close()


def test_embed_signature_is_the_mask_averaged_last_layer(profiled, small_run):
    """The exported `embed` signature against the same pooling of the fine-tuned Keras model, in process."""
    from transformers import BertTokenizerFast

    from moatkit.models.export import load_text_model
    from moatkit.serving.monitoring.model_runner import VersionModel

    texts = ["a wonderful, moving film", "dull", "the plot is thin but the performances carry it"]
    served = VersionModel(profiled[1]).embeddings(texts)
    model, _, task = load_text_model(small_run["saved_model_dir"])
    batch = BertTokenizerFast.from_pretrained(small_run["saved_model_dir"])(
        texts, padding=True, truncation=True, max_length=task["max_length"], return_tensors="np")
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                   training=False).hidden_states[-1].numpy()
    mask = batch["attention_mask"][:, :, None]
    expected = (hidden * mask).sum(1) / mask.sum(1)
    assert served.shape == (3, 384)
    np.testing.assert_allclose(served, expected, atol=2e-4)


def test_a_version_with_a_non_text_signature_is_one_line(tmp_path, capsys):
    from tests.serving_helpers import save_half_plus

    save_half_plus(str(tmp_path / "repo" / "half" / "1"))
    (tmp_path / "dev").mkdir()
    write_dataset(tmp_path / "dev", [{"id": str(i), "text": f"text {i}", "label": "a"} for i in range(60)],
                  name="dev", provenance={}, license="test")
    code = main(["monitor", "profile", "--set", f"repo={tmp_path / 'repo'}", "--set", "model=half",
                 "--set", f"data={tmp_path / 'dev'}"])
    error = capsys.readouterr().err
    assert code == 2 and "not a string 'text'" in error and "Traceback" not in error
