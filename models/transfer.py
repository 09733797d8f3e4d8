"""Does the pretraining pay off? Fine-tunes a pretrained BERT dir and the same architecture from random weights on
one task with one recipe (same split, seed, epochs, learning rate, early stopping on dev) and reports both test
scores and their difference — the number a from-scratch pretraining run is judged by."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from moatkit.data.core.errors import ConfigError


@dataclasses.dataclass
class TransferConfig:
    task: str | None = None  # e.g. mr-polarity; null: no transfer check
    epochs: int = 4
    learning_rate: float = 1e-4  # small BERTs take higher rates than BERT-base's 2e-5..5e-5
    batch_size: int = 32
    max_length: int = 64
    seed: int = 13
    max_train_examples: int | None = None  # budget knob for tests and demos
    max_eval_examples: int | None = None


def transfer_check(pretrained_dir: str | Path, run_dir: str | Path, config: TransferConfig, *,
                   verbose: int = 1) -> dict:
    """Two `moat finetune` runs, `<run_dir>/pretrained` and `<run_dir>/random`; returns their test metrics and
    `delta` = pretrained − random for the task's score (accuracy for classification, Pearson for regression)."""
    from moatkit.models.finetune import FinetuneConfig, finetune

    if not config.task:
        raise ConfigError("transfer.task is not set", fix="e.g. --set transfer.task=mr-polarity")
    runs = {}
    for init in ("pretrained", "random"):
        report = finetune(FinetuneConfig(
            task=config.task, model=str(pretrained_dir), init=init, run_dir=str(Path(run_dir) / init),
            epochs=config.epochs, learning_rate=config.learning_rate, batch_size=config.batch_size,
            max_length=config.max_length, seed=config.seed, max_train_examples=config.max_train_examples,
            max_eval_examples=config.max_eval_examples, resume=False), verbose=verbose)
        test = report["test"]
        runs[init] = {"test_score": test["score"], "best_dev_score": report["best_dev"]["score"],
                      "epochs_run": report["timings"]["epochs_run"],
                      "train_seconds": report["timings"]["train_seconds"], "run_dir": str(Path(run_dir) / init),
                      **{k: test[k] for k in ("accuracy", "macro_f1", "pearson", "spearman") if k in test}}
        sizes = report["sizes"]
    return {"task": config.task, "config": dataclasses.asdict(config), "sizes": sizes, **runs,
            "delta": round(runs["pretrained"]["test_score"] - runs["random"]["test_score"], 4)}


def add_transfer_to_report(run_dir: str | Path, config: TransferConfig, *, verbose: int = 1) -> dict:
    """Runs the check on a finished pretraining run and stores it under "transfer" in its report.json."""
    report_path = Path(run_dir) / "report.json"
    if not report_path.is_file():
        raise ConfigError(f"'{report_path}' does not exist: the pretraining run has not finished",
                          fix="run `moat pretrain` with the same config first")
    report = json.loads(report_path.read_text())
    report["transfer"] = transfer_check(report["pretrained_dir"], Path(run_dir) / "transfer", config, verbose=verbose)
    report_path.write_text(json.dumps(report, indent=2))
    return report
