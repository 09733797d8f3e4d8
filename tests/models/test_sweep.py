"""`moat finetune --sweep`: one run per grid point, selection on dev, HParams for TensorBoard."""
import json
from pathlib import Path

import pytest

from moatkit.data.core.errors import ConfigError
from moatkit.models.finetune import FinetuneConfig
from moatkit.models.sweep import parse_grid, run_sweep


def test_parse_grid_errors():
    assert parse_grid(["learning_rate=1e-4, 5e-5", "epochs=1,2"]) == {"learning_rate": ["1e-4", "5e-5"],
                                                                       "epochs": ["1", "2"]}
    with pytest.raises(ConfigError, match="'lr' is not a fine-tuning setting"):
        parse_grid(["lr=1"])
    with pytest.raises(ConfigError, match="expects key=v1,v2"):
        parse_grid(["epochs"])


def test_bad_value_fails_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="config key 'epochs': got 'x'"):
        run_sweep(FinetuneConfig(run_dir=str(tmp_path)), {"epochs": ["1", "x"]}, log=lambda line: None)
    assert not list(tmp_path.glob("epochs=*"))


def test_sweep_runs_every_point(tmp_path, tiny_bert_dir, mr_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # the sweep machinery is the subject, not what MiniLM learns: the tiny BERT (tests/conftest.py) for one epoch
    config = FinetuneConfig(model=str(tiny_bert_dir), run_dir=str(tmp_path), max_train_examples=64,
                            max_eval_examples=64, max_length=16, epochs=1)
    summary = run_sweep(config, {"learning_rate": ["1e-4", "5e-5"]}, verbose=0, log=lambda line: None)
    assert [row["run"] for row in summary["runs"]] == ["learning_rate=1e-4", "learning_rate=5e-5"]
    assert summary["best_on_dev"]["dev_score"] == max(r["dev_score"] for r in summary["runs"])
    assert json.loads((tmp_path / "sweep.json").read_text()) == summary
    for row in summary["runs"]:
        report = json.loads((Path(row["run_dir"]) / "report.json").read_text())
        assert report["config"]["learning_rate"] == float(row["run"].split("=")[1])
        events = EventAccumulator(str(Path(row["run_dir"]) / "eval"))
        events.Reload()
        assert "_hparams_/session_start_info" in events.Tags()["tensors"]
