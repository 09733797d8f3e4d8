"""MirroredStrategy over 2 logical CPU devices and mixed_bfloat16 complete and match float32 on one device.

Each run is a `moat finetune` subprocess: logical devices and the precision policy are process-wide settings. The
model is the tiny fine-tuned BERT of tests/conftest.py (`tiny_run`: an HF TFBertForSequenceClassification like MiniLM,
2 layers of 32) trained on at 3e-4: the strategy and precision plumbing is the subject, and it compiles and trains in
seconds."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUDGET = ["--set", "max_train_examples=128", "--set", "max_eval_examples=200", "--set", "max_length=32",
          "--set", "batch_size=32", "--set", "learning_rate=3e-4",
          "--set", "precision=float32"]  # the reference; the bf16 run overrides it


def _run(model_dir, tmp_path, name, *flags):
    run_dir = tmp_path / name
    result = subprocess.run([sys.executable, "-m", "moatkit.app.cli", "finetune", *BUDGET, "--set",
                             f"model={model_dir}", "--set", f"run_dir={run_dir}", *flags], capture_output=True,
                            text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="module")
def model_dir(tiny_run):
    return tiny_run / "model"


@pytest.fixture(scope="module")
def single(tmp_path_factory, model_dir, mr_dir):
    return _run(model_dir, tmp_path_factory.mktemp("single"), "single", "--set", "strategy=default")


def test_mirrored_two_replicas_matches_one_device(single, model_dir, tmp_path):
    mirrored = _run(model_dir, tmp_path, "mirrored", "--set", "logical_cpus=2", "--set", "strategy=mirrored",
                    "--set", "log_every=1")  # also logs the learning rate, a MirroredVariable in this scope
    assert single["replicas"] == 1 and mirrored["replicas"] == 2
    assert single["model_dir"] == mirrored["model_dir"] == str(model_dir)
    # Same global batch and seed; per-replica dropout streams differ, so the trajectories agree closely, not bitwise
    # (measured: 1e-4 and 1.4e-3 on the first two dev evaluations; a doubled update, e.g. a loss not scaled by the
    # global batch, moves them by 6e-3 and 2e-2). Early stopping (patience 2) leaves at least 3 evaluations.
    for ours, reference in zip(mirrored["dev_history"][:2], single["dev_history"][:2], strict=True):
        assert abs(ours["loss"] - reference["loss"]) < 5e-3, (mirrored["dev_history"], single["dev_history"])
    assert mirrored["sizes"] == single["sizes"]


def test_mixed_bfloat16_matches_float32(single, model_dir, tmp_path):
    bf16 = _run(model_dir, tmp_path, "bf16", "--set", "precision=mixed_bfloat16")
    assert single["config"]["precision"] == "float32" and bf16["config"]["precision"] == "mixed_bfloat16"
    # measured: 1.2e-2 on the first dev evaluation, 3e-3 on test (bfloat16 keeps 8 bits of a 32-wide model's mantissa)
    assert abs(bf16["dev_history"][0]["loss"] - single["dev_history"][0]["loss"]) < 2e-2
    assert abs(bf16["test"]["loss"] - single["test"]["loss"]) < 2e-2


@pytest.mark.parametrize("gpu_capability, cpu_bf16, expected", [
    ((8, 0), False, "mixed_float16"),  # tensor cores
    ((6, 1), True, "float32"),  # a Pascal GPU: float16 without tensor cores is no faster
    (None, True, "mixed_bfloat16"),  # AMX / AVX512-BF16 CPU
    (None, False, "float32"),
])
def test_auto_precision_follows_the_hardware(monkeypatch, gpu_capability, cpu_bf16, expected):
    import tensorflow as tf
    from moatkit.models import distribute

    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: (
        ["GPU:0"] if kind == "GPU" and gpu_capability else [] if kind in ("GPU", "TPU") else real(kind)))
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"compute_capability": gpu_capability})
    monkeypatch.setattr(distribute, "_cpu_has_bfloat16_units", lambda: cpu_bf16)
    assert distribute.resolve_precision("auto") == expected
    assert distribute.resolve_precision("float32") == "float32"
