"""`moat finetune --sweep key=v1,v2 ...`: one fine-tuning run per grid point, each an HParams trial."""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

from moatkit.data.core.config import from_dict
from moatkit.data.core.errors import ConfigError
from moatkit.models.finetune import FinetuneConfig, finetune

HPARAM_KEYS = ("task", "learning_rate", "epochs", "batch_size", "max_length", "precision", "replicas")


def parse_grid(pairs: list[str]) -> dict[str, list[str]]:
    grid = {}
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        if not sep or not values.strip():
            raise ConfigError(f"--sweep expects key=v1,v2,..., got '{pair}'", fix="e.g. --sweep learning_rate=1e-4,5e-5")
        if key not in fields or key in ("run_dir", "split"):
            raise ConfigError(f"--sweep key '{key}' is not a fine-tuning setting",
                              fix="sweep over e.g. learning_rate, epochs, batch_size, max_length")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def run_sweep(config: FinetuneConfig, grid: dict[str, list[str]], *, verbose: int = 2, log=print) -> dict:
    """Runs every point of the grid into `<run_dir>/<key=value,...>/` and writes `<run_dir>/sweep.json`."""
    from tensorboard.plugins.hparams import api as hparams
    import tensorflow as tf

    root = Path(config.run_dir)
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    base = dataclasses.asdict(config)
    configs = []  # validate every point before the first (long) run starts
    for point in points:
        name = ",".join(f"{k}={v}" for k, v in point.items())
        configs.append((name, from_dict(FinetuneConfig, {**base, **point, "run_dir": str(root / name)})))
    with tf.summary.create_file_writer(str(root)).as_default():
        hparams.hparams_config(hparams=[hparams.HParam(k) for k in HPARAM_KEYS],
                               metrics=[hparams.Metric("dev_score", group="eval", display_name="dev score"),
                                        hparams.Metric("test_score", group="eval", display_name="test score")])
    rows = []
    for index, (name, point_config) in enumerate(configs, start=1):
        log(f"[sweep {index}/{len(configs)}] {name}")
        report = finetune(point_config, verbose=verbose)
        rows.append({"run": name, "run_dir": point_config.run_dir, "dev_score": report["best_dev"]["score"],
                     "test_score": report["test"]["score"], "train_seconds": report["timings"]["train_seconds"]})
    best = max(rows, key=lambda row: row["dev_score"])  # selected on dev, never on test
    summary = {"grid": grid, "runs": rows, "best_on_dev": best, "tensorboard": f"tensorboard --logdir {root}"}
    (root / "sweep.json").write_text(json.dumps(summary, indent=2))
    return summary
