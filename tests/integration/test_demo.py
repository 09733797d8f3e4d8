"""The end-to-end demo job on a budget, and the full-size demo (slow)."""
import json
from pathlib import Path

import pytest

from moatkit.app.pipeline import DemoConfig, run_demo
from moatkit.models.finetune import FinetuneConfig


def _check_summary(summary):
    assert summary["max_abs_diff_rest_vs_grpc"] <= 1e-5
    assert summary["max_abs_diff_rest_vs_keras"] <= 1e-5
    assert "serving_default" in summary["signatures"]  # TF Serving also lists __saved_model_init_op
    assert summary["predictions"][0]["text"] == "a wonderful, moving film"
    assert summary["predictions"][0]["label"] == "positive"
    assert 0 < summary["rest_p50_ms"] <= summary["rest_p99_ms"] < 5000
    assert summary["predictions"][1]["label"] == "negative"  # 'a dull, lifeless and badly acted mess'


def test_demo_on_a_budget(budget_demo):
    """The session's budget demo (tests/conftest.py: 480 MR sentences, 2 epochs at 3e-4), whose fine-tune and export
    the export and serving tests reuse."""
    summary, lines = budget_demo["summary"], budget_demo["lines"]
    _check_summary(summary)
    assert summary["split_sizes"] == {"train": 480, "dev": 400, "test": 400}
    assert summary["test_accuracy"] >= 0.70  # majority class is 0.50
    assert Path(summary["model_version_dir"]).name == "1"
    assert any("+ monitoring profile" in line for line in lines)  # the monitor's reference, written at export
    assert (Path(summary["model_version_dir"]) / "assets.extra" / "moat_profile.json").is_file()
    assert summary["model_megabytes"] > 80  # MiniLM's 22.7M float32 parameters
    assert any("TensorBoard: tensorboard --logdir" in line for line in lines)
    saved = json.loads((budget_demo["root"] / "runs" / "sentiment" / "demo_summary.json").read_text())
    assert saved["test_accuracy"] == summary["test_accuracy"]


@pytest.mark.slow
def test_demo_rejects_accuracy_below_its_floor(tmp_path, minilm_dir, mr_dir):
    from moatkit.data.core.errors import MoatError

    config = DemoConfig(finetune=FinetuneConfig(run_dir=str(tmp_path / "run"), max_train_examples=64,
                                                max_eval_examples=64, max_length=16),
                        repo=str(tmp_path / "models"), latency_requests=1, min_test_accuracy=1.01)
    with pytest.raises(MoatError, match="below min_test_accuracy 1.01"):
        run_demo(config, log=lambda line: None)


@pytest.mark.slow
def test_full_demo_reaches_published_level(tmp_path):
    config = DemoConfig(repo=str(tmp_path / "models"))
    config.finetune.run_dir = str(tmp_path / "runs" / "sentiment")
    summary = run_demo(config, log=print)
    _check_summary(summary)
    assert summary["test_accuracy"] >= 0.80
    assert summary["split_sizes"]["test"] == 2114
    assert Path(summary["model_version_dir"]).is_dir()
