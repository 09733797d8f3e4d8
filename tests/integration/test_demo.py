"""The end-to-end demo job on a budget, and the full-size demo (slow)."""
import json
from pathlib import Path

import pytest

from app.pipeline import DemoConfig, run_demo
from models.finetune import FinetuneConfig


def _check_summary(summary):
    assert summary["max_abs_diff_rest_vs_grpc"] <= 1e-5
    assert summary["max_abs_diff_rest_vs_keras"] <= 1e-5
    assert "serving_default" in summary["signatures"]  # TF Serving also lists __saved_model_init_op
    assert summary["predictions"][0]["text"] == "a wonderful, moving film"
    assert summary["predictions"][0]["label"] == "positive"
    assert summary["rest_p50_ms"] > 0


def test_demo_on_a_budget(tmp_path, minilm_dir, mr_dir):
    lines = []
    config = DemoConfig(
        finetune=FinetuneConfig(run_dir=str(tmp_path / "runs" / "sentiment"), max_train_examples=1200,
                                max_eval_examples=300, epochs=2, max_length=48),
        repo=str(tmp_path / "models"), latency_requests=10, min_test_accuracy=0.70)
    summary = run_demo(config, log=lines.append)
    _check_summary(summary)
    assert summary["split_sizes"] == {"train": 1200, "dev": 300, "test": 300}
    assert summary["test_accuracy"] >= 0.70
    assert any("TensorBoard: tensorboard --logdir" in line for line in lines)
    saved = json.loads((tmp_path / "runs" / "sentiment" / "demo_summary.json").read_text())
    assert saved["test_accuracy"] == summary["test_accuracy"]


@pytest.mark.slow
def test_full_demo_reaches_published_level(tmp_path):
    config = DemoConfig(finetune=FinetuneConfig(run_dir=str(tmp_path / "runs" / "sentiment")),
                        repo=str(tmp_path / "models"))
    summary = run_demo(config, log=print)
    _check_summary(summary)
    assert summary["test_accuracy"] >= 0.80
    assert summary["split_sizes"]["test"] == 2114
    assert Path(summary["model_version_dir"]).is_dir()
