"""MirroredStrategy over 2 logical CPU devices and mixed_bfloat16 complete and match float32 on one device.

Each run is a `moat finetune` subprocess: logical devices and the precision policy are process-wide settings."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUDGET = ["--set", "max_train_examples=128", "--set", "max_eval_examples=200", "--set", "max_length=32",
          "--set", "batch_size=32", "--set", "precision=float32"]  # the reference; the bf16 run overrides it


def _run(tmp_path, name, *flags):
    run_dir = tmp_path / name
    result = subprocess.run([sys.executable, "-m", "moatkit.app.cli", "finetune", *BUDGET, "--set", f"run_dir={run_dir}",
                             *flags], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory, minilm_dir, mr_dir):
    return _run(tmp_path_factory.mktemp("single"), "single", "--set", "strategy=default")


def test_mirrored_two_replicas_matches_one_device(single, tmp_path):
    mirrored = _run(tmp_path, "mirrored", "--set", "logical_cpus=2", "--set", "strategy=mirrored",
                    "--set", "log_every=1")  # also logs the learning rate, a MirroredVariable in this scope
    assert single["replicas"] == 1 and mirrored["replicas"] == 2
    # Same global batch and seed; per-replica dropout streams differ, so the trajectories agree closely, not bitwise.
    assert abs(mirrored["dev_history"][0]["loss"] - single["dev_history"][0]["loss"]) < 5e-3
    assert mirrored["sizes"] == single["sizes"]


def test_mixed_bfloat16_matches_float32(single, tmp_path):
    bf16 = _run(tmp_path, "bf16", "--set", "precision=mixed_bfloat16")
    assert single["config"]["precision"] == "float32" and bf16["config"]["precision"] == "mixed_bfloat16"
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
