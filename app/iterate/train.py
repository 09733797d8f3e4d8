"""Step 2 of `moat iterate`: a candidate warm-started from the served version's checkpoint.

Training data = `replay` examples of the old train split (so the old domain is not forgotten) + the new labels,
each seen `new_repeats` times; dev = part of the old dev split + `heldout_share` of the new labels (early stopping
and the candidate's monitoring profile see both domains); test = the held-out new labels. The recipe is
`moat finetune`'s, with its resume: a killed training continues from its checkpoints.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moatkit.data.core.errors import ConfigError
from moatkit.data.core.files import staged_dir

OLD_DEV = 600  # old dev examples kept in the candidate's dev split


def build_training_data(out: Path, *, old_split: Path, new: list[dict], labels: list[str], replay: int,
                        new_repeats: int, heldout_share: float, seed: int) -> dict:
    """Writes out/{train,dev,test} dataset dirs; returns their sizes."""
    from moatkit.data.dataset import read_records, write_dataset

    if not all((old_split / name / "manifest.json").is_file() for name in ("train", "dev")):
        raise ConfigError(f"'{old_split}' is not a split dir with train/ and dev/",
                          fix="set train_data to the split dir the version was fine-tuned on")
    rng = np.random.default_rng(seed)
    old_train, old_dev = read_records(old_split / "train"), read_records(old_split / "dev")
    replayed = [old_train[i] for i in rng.permutation(len(old_train))[:replay]]
    order = rng.permutation(len(new))
    held_count = int(round(heldout_share * len(new))) if len(new) >= 10 else 0
    held, fit = [new[i] for i in order[:held_count]], [new[i] for i in order[held_count:]]
    train = replayed + [dict(r, id=f"{r['id']}#{k}") for k in range(new_repeats) for r in fit]
    train = [train[i] for i in rng.permutation(len(train))]
    dev = [old_dev[i] for i in rng.permutation(len(old_dev))[:OLD_DEV]] + held
    test = held or fit
    missing = set(labels) - {r.get("label") for r in train}
    if missing:
        raise ConfigError(f"the candidate's training data has no example of {sorted(missing)}",
                          fix="replay old training data (replay > 0) or annotate more texts")
    provenance = {"old_split": str(old_split), "new_labels": len(new), "seed": seed}
    with staged_dir(out) as staging:
        for name, records in (("train", train), ("dev", dev), ("test", test)):
            write_dataset(staging / name, [{k: v for k, v in r.items() if k != "_line"} for r in records],
                          name=f"iterate-{name}", labels=labels, license="mixed: the old split's and the annotators'",
                          provenance=provenance)
    return {"train": len(train), "replayed": len(replayed), "new_in_train": len(fit), "new_heldout": len(held),
            "dev": len(dev), "test": len(test)}


def train_candidate(run_dir: Path, *, data_dir: Path, base_model: str, origin_split: str, config) -> dict:
    """`moat finetune` from the version's checkpoint; returns its report (resumes a killed run; a finished one is
    not trained again). The candidate's moat_task.json keeps `origin_split_dir`, the original split, so the next
    iteration replays and gates on it rather than on this loop's mix."""
    from moatkit.models.finetune import FinetuneConfig, finetune

    report_path, task_path = run_dir / "report.json", run_dir / "model" / "moat_task.json"
    if not (report_path.is_file() and task_path.is_file()):
        finetune(FinetuneConfig(task="classification", model=base_model, data=str(data_dir), target="label",
                                run_dir=str(run_dir), epochs=config.epochs, learning_rate=config.learning_rate,
                                batch_size=config.batch_size, max_length=config.max_length or 64, seed=config.seed,
                                patience=max(config.epochs, 2), log_every=20), verbose=0)
    task = json.loads(task_path.read_text())
    if task.get("origin_split_dir") != origin_split:
        task["origin_split_dir"] = origin_split
        partial = task_path.with_name("moat_task.json.partial")
        partial.write_text(json.dumps(task, indent=2))
        partial.replace(task_path)
    return json.loads(report_path.read_text())


def export_candidate(model_dir: Path, out_dir: Path, name: str, *, log=print) -> dict:
    """The candidate exported under out_dir (not the served repository: it is gated first), with its monitoring
    profile and a mark naming this loop (rollout.CANDIDATE_MARK) so a copy of it is recognised when published."""
    from moatkit.app.iterate.rollout import CANDIDATE_MARK
    from moatkit.app.monitor_profile import export_profile_hook
    from moatkit.models.export import ExportConfig, export_text_model

    final = out_dir / name / "1"
    if not (final / CANDIDATE_MARK).is_file():
        import shutil
        import time

        shutil.rmtree(out_dir / name, ignore_errors=True)  # a half-finished export of a killed run
        export_text_model(ExportConfig(model_dir=str(model_dir), repo=str(out_dir), name=name, version=1),
                          extra=export_profile_hook(log))
        (final / CANDIDATE_MARK).write_text(json.dumps({"run_dir": str(out_dir.parent.resolve()),
                                                        "model_dir": str(model_dir), "created": time.time()}))
    return {"version_dir": str(final), "megabytes": round(sum(p.stat().st_size for p in final.rglob("*")
                                                              if p.is_file()) / 1e6, 1)}
