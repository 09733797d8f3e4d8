"""An interrupted fine-tune resumes at the next epoch with its optimizer state, history and best weights."""
import dataclasses
import json
from pathlib import Path

import pytest
import tensorflow as tf

from moatkit.data.core.errors import ConfigError
from moatkit.models.finetune import FinetuneConfig, finetune


class Crash(Exception):
    pass


class CrashAfterFirstEpoch(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise Crash()


def test_interrupted_run_resumes_after_its_last_epoch(tmp_path, tiny_run, mr_dir):
    # resuming is the subject: the tiny fine-tuned BERT of tests/conftest.py (~0.70 on MR) trains on in seconds
    config = FinetuneConfig(model=str(tiny_run / "model"), run_dir=str(tmp_path / "run"), max_train_examples=160,
                            max_eval_examples=64, epochs=2, learning_rate=1e-4, max_length=32, log_every=1)
    with pytest.raises(Crash):
        finetune(config, verbose=0, callbacks=(CrashAfterFirstEpoch(),))
    checkpoints = Path(config.run_dir) / "checkpoints"
    state = json.loads((checkpoints / "state.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 5 and len(state["history"]) == 1  # 160 / 32 steps

    with pytest.raises(ConfigError, match="different config"):
        finetune(dataclasses.replace(config, learning_rate=3e-5), verbose=0)

    report = finetune(config, verbose=0)
    assert report["resumed_after_epoch"] == 1
    assert [h["epoch"] for h in report["dev_history"]] == [1, 2]
    assert report["dev_history"][0] == state["history"][0]  # the first epoch was not re-run
    assert report["dev_history"][1]["step"] == 10
    assert report["timings"]["optimizer_steps"] == 10  # Adam moments and the LR schedule's step were restored
    assert not checkpoints.exists()  # a finished run keeps its model, not the optimizer state
    assert report["test"]["accuracy"] > 0.5
