"""`moat iterate`: one resumable run from a served version's traffic to a promoted (or refused) successor.

state.json in the run dir records each finished step and its result, so the same command after a kill goes on
from the first unfinished step; the candidate's version number is recorded before anything is written under it.
The run stops after `select` until `annotations` names the answered batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

from moatkit.app.iterate.config import IterateConfig
from moatkit.data.core.errors import ConfigError

# what a resumed run may change: the answered batch arrives on the second run, a dry run (deploy: false) may
# go on to deploy; addresses and waits are operational
_NOT_FINGERPRINTED = ("annotations", "grpc", "rest", "live_timeout_s", "probes", "skip_offline_gate", "deploy")


class State:
    def __init__(self, run_dir: Path, config: IterateConfig):
        from moatkit.models.training import config_fingerprint

        self.path = run_dir / "state.json"
        fingerprint = config_fingerprint(config, ignore=_NOT_FINGERPRINTED)
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"fingerprint": fingerprint,
                                                                                   "steps": {}}
        if self.data["fingerprint"] != fingerprint:
            raise ConfigError(f"'{run_dir}' holds a loop with another config",
                              fix="rerun with the same config to resume it, or pick a new run_dir")

    def done(self, step: str) -> dict | None:
        return self.data["steps"].get(step)

    def finish(self, step: str, result: dict) -> dict:
        self.data["steps"][step] = {**result, "finished": time.time()}
        partial = self.path.with_name("state.json.partial")
        partial.write_text(json.dumps(self.data, indent=2, default=str))
        partial.replace(self.path)
        return result


def _current_version(config: IterateConfig, base: Path) -> int:
    if config.version is not None:
        return config.version
    if config.model_config_file and Path(config.model_config_file).is_file():
        from moatkit.app.iterate.rollout import STABLE, Server

        stable = Server(grpc=config.grpc, model=config.model, config_file=config.model_config_file,
                        log=print).labels().get(STABLE)
        if stable:
            return stable
    versions = sorted(int(p.name) for p in base.glob("*") if p.is_dir() and p.name.isdigit())
    if not versions:
        raise ConfigError(f"no model versions under '{base}'", fix="set repo and model to the served repository")
    return versions[-1]


def _select(config, state, run_dir, current_dir, current, labels, train_keys, log) -> dict:
    from moatkit.app.iterate.select import choose, logged_pool, write_batch
    from moatkit.serving.monitoring.model_runner import VersionModel
    from moatkit.serving.monitoring.profile import read_profile

    pool, counts = logged_pool(config.logs, config.model, current, labels, exclude=train_keys)
    log(f"select: {len(pool)} distinct texts answered by version {current} ({counts})")
    import numpy as np

    probabilities = np.stack([p["probabilities"] for p in pool])
    embeddings = reference = None
    model = VersionModel(current_dir) if config.strategy == "loop" else None
    if model is not None and model.has_embeddings:
        embeddings = model.embeddings([p["text"] for p in pool])
        reference = read_profile(current_dir).get("embeddings", {}).get("values")
    chosen, scores = choose(probabilities, config.budget, strategy=config.strategy, seed=config.seed,
                            embeddings=embeddings, reference=reference, drift_weight=config.drift_weight,
                            diversity=config.diversity)
    path = write_batch(pool, chosen, scores, labels, run_dir / "select")
    return state.finish("select", {"pool": len(pool), "selected": len(chosen), "batch": str(path),
                                   "log_records": counts, "novelty": embeddings is not None})


def _train(config, state, run_dir, source, labels, log) -> dict:
    from moatkit.app.iterate.select import merge_answers, read_batch
    from moatkit.app.iterate.train import build_training_data, train_candidate

    if config.candidate:
        return state.finish("train", {"model_dir": config.candidate, "given": True})
    merged = state.done("merge")
    if merged is None:
        labelled, report = merge_answers(read_batch(run_dir / "select"), config.annotations, labels)
        (run_dir / "merge").mkdir(exist_ok=True)
        (run_dir / "merge" / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled))
        merged = state.finish("merge", report)
        log(f"merge: {report['labelled']} labelled, {report['duplicates']} duplicate rows, "
            f"{report['conflicts']} conflicting ids left out, {report['unanswered']} unanswered")
    new = [json.loads(line) for line in (run_dir / "merge" / "labelled.jsonl").read_text().splitlines() if line]
    train_data = config.train_data or source.get("origin_split_dir") or source.get("split_dir")
    if not train_data:
        raise ConfigError("the version records no training split", fix="set train_data to its split dir")
    sizes = build_training_data(run_dir / "data", old_split=Path(train_data), new=new, labels=labels,
                                replay=config.replay, new_repeats=config.new_repeats,
                                heldout_share=config.heldout_share, seed=config.seed)
    log(f"train: {sizes['train']} examples ({sizes['replayed']} replayed, {sizes['new_in_train']} new × "
        f"{config.new_repeats}), warm start from {config.base_model or source.get('model_dir')}")
    base_model = config.base_model or source.get("model_dir")
    if not base_model or not Path(base_model).is_dir():
        raise ConfigError(f"the version's checkpoint {base_model!r} is not a dir",
                          fix="set base_model to the HF model dir the version was exported from")
    report = train_candidate(run_dir / "train", data_dir=run_dir / "data", base_model=base_model,
                             origin_split=str(train_data),
                             config=dataclasses.replace(config, max_length=config.max_length or source.get("max_length")))
    return state.finish("train", {"model_dir": report["saved_model_dir"], "sizes": sizes,
                                  "heldout_new_accuracy": report["test"]["accuracy"]})


def run_iterate(config: IterateConfig, *, log=print) -> dict:
    """The loop; returns {"status", "candidate" (the published version or None), "report"} or, before the
    answers exist, {"status": "waiting for annotations", "batch"}."""
    config.validate()
    base = Path(config.repo) / config.model
    if not config.run_dir:  # one run dir per improved version, so the documented command never meets an old loop
        config = dataclasses.replace(config, run_dir=f"runs/iterate/{config.model}-v{_current_version(config, base)}")
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir):
        return _run(config, run_dir, base, log)


@contextlib.contextmanager
def _locked(run_dir: Path):
    """One `moat iterate` per run dir; the lock dies with its process, so a killed run leaves none behind."""
    import fcntl

    with open(run_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another `moat iterate` is running on '{run_dir}'",
                              fix="wait for it to finish, or use another run_dir") from None
        yield


def _run(config: IterateConfig, run_dir: Path, base: Path, log) -> dict:
    from moatkit.app.iterate.steps import _server, deploy_and_decide
    from moatkit.models.export import source_of

    state = State(run_dir, config)
    current = (state.done("start") or {}).get("current") or _current_version(config, base)
    current_dir = base / str(current)
    if not (current_dir / "saved_model.pb").is_file():
        raise ConfigError(f"version {current} of {config.model!r} is not in '{base}'", fix="set repo, model, version")
    source = source_of(current_dir)
    labels = source.get("labels") or _profile_labels(current_dir)
    if not labels:
        raise ConfigError(f"'{current_dir}' records no class labels (assets.extra/moat_source.json)",
                          fix="iterate improves classifiers exported by `moat export`; export the version again")
    if config.deploy:  # a wrong server address or config file is found now, not after the training
        _server(config, log, base=base)
    state.done("start") or state.finish("start", {"current": current})
    if state.done("select") is None and not config.candidate:
        _select(config, state, run_dir, current_dir, current, labels, _known_keys(config, source), log)
    if state.done("train") is None:
        if config.annotations is None and not config.candidate:
            batch = state.done("select")["batch"]
            log(f"annotate the label column of {batch}, then run the same command with --set annotations={batch}")
            return {"status": "waiting for annotations", "batch": batch}
        _train(config, state, run_dir, source, labels, log)
    return deploy_and_decide(config, state, run_dir, base=base, current=current, labels=labels, log=log)


def _known_keys(config: IterateConfig, source: dict) -> set[str]:
    """Text keys left out of the pool: the old training split (it teaches the model nothing new) and every golden
    slice (annotated and trained on, it would inflate the gate's numbers)."""
    from moatkit.data.dataset import read_records
    from moatkit.serving.monitoring.feedback import text_key

    split = config.train_data or source.get("origin_split_dir") or source.get("split_dir")
    dirs = [Path(split) / "train"] if split else []
    dirs += [Path(path) for path in config.golden.values()]
    return {text_key(r["text"]) for d in dirs if (d / "manifest.json").is_file() for r in read_records(d)
            if r.get("text")}


def _profile_labels(version_dir: Path) -> list[str] | None:
    from moatkit.serving.monitoring.profile import PROFILE_FILE, read_profile

    return read_profile(version_dir, embeddings=False).get("labels") if (version_dir / PROFILE_FILE).is_file() else None
