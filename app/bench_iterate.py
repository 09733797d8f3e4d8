"""The iteration scenario on real data (`moat bench --only iterate`, or `python -m moatkit.app.bench_iterate`).

The MR model (a version exported by `moat demo`) is served with request logging; its traffic shifts: 600 MR test
sentences, then 2,000 snippets of a new domain (`amazon` product reviews or `nyt` editorials, polarity by the sign
of the human score). `moat iterate` selects `budget` logged texts; the catalog's labels stand in for annotators.
Per domain and seed, the loop's selection and a random selection of the same budget each train a candidate
(deploy: false) gated on held-out slices: the rest of MR test and the domain's texts that were never served. Then
the loop's first candidate is deployed for real under 16 concurrent clients (canary → live gate → promote), and a
candidate trained on shuffled labels must be refused by the offline gate.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from moatkit.app.bench_monitor import _domain_rows, _replay
from moatkit.app.iterate.config import IterateConfig
from moatkit.app.iterate.loop import run_iterate
from moatkit.app.loadgen import BackgroundLoad
from moatkit.serving.client import grpc_model_status
from moatkit.serving.monitoring.feedback import text_key
from moatkit.serving.process import ServerProcess

LABELS = ["negative", "positive"]


@dataclasses.dataclass
class IterateBench:
    version_dir: str = "artifacts/models/sentiment/1"  # the served MR version (moat demo's export)
    base_model: str | None = None  # its HF checkpoint (default: what the version records)
    train_data: str | None = None  # its training split (default: what the version records)
    domains: tuple[str, ...] = ("amazon", "nyt")
    served_mr: int = 600
    served_shifted: int = 2000
    budget: int = 300
    seeds: int = 3
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1 (to add seeds to an earlier run)
    clients: int = 16
    shuffled: bool = True  # candidates on shuffled labels: only the annotations, and all training labels
    deploy: bool = True  # deploy the loop's first candidate for real (canary, live gate, promotion)
    rollback: bool = True  # deploy a constant-class candidate past the offline gate: the live gate must roll it back


def _write(path: Path, records: list[dict], name: str) -> str:
    from moatkit.data.dataset import write_dataset

    write_dataset(path, records, name=name, provenance={"bench": "iterate"}, license="see the catalog entry",
                  labels=LABELS)
    return str(path)


def _answer(batch_file: Path, truth: dict, out: Path, *, shuffle_seed: int | None = None) -> str:
    rows = [json.loads(line) for line in batch_file.read_text().splitlines() if line]
    labels = [truth[text_key(r["text"])] for r in rows]
    if shuffle_seed is not None:
        labels = list(np.random.default_rng(shuffle_seed).permutation(labels))
    out.write_text("".join(json.dumps({"id": r["id"], "label": label}) + "\n" for r, label in zip(rows, labels)))
    return str(out)


def _world(bench: IterateBench, domain: str, work: Path, log) -> dict:
    from moatkit.models.export import source_of
    from moatkit.app.monitor_profile import profile_from_data

    version = Path(bench.version_dir)
    source = source_of(version)
    train_data = bench.train_data or source.get("split_dir")
    repo = work / "models"
    shutil.copytree(version, repo / "sentiment" / "1")
    if not (repo / "sentiment" / "1" / "assets.extra" / "moat_profile.json").is_file():
        profile_from_data(repo / "sentiment" / "1", Path(train_data) / "dev")
    from moatkit.data.dataset import read_records

    mr = read_records(Path(train_data) / "test")
    order = np.random.default_rng(0).permutation(len(mr))
    shifted = _domain_rows(domain, 100_000, 0)
    served = [mr[i] for i in order[:bench.served_mr]] + shifted[:bench.served_shifted]
    golden = {"original": _write(work / "golden" / "mr", [mr[i] for i in order[bench.served_mr:]], "mr-heldout"),
              domain: _write(work / "golden" / domain, shifted[bench.served_shifted:], f"{domain}-heldout")}
    config = work / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "sentiment" base_path: "{repo / "sentiment"}" '
                      f'model_platform: "tensorflow" logging_config {{ log_collector_config {{ type: "file" '
                      f'filename_prefix: "{work / "logs" / "sentiment"}" }} sampling_config {{ sampling_rate: 1.0 }} '
                      f'}} }} }}')
    log(f"      {domain}: serving {len(served)} texts ({bench.served_mr} MR, {bench.served_shifted} {domain}); "
        f"golden {', '.join(f'{k} {len(read_records(v))}' for k, v in golden.items())}")
    return {"repo": repo, "config": config, "served": served, "golden": golden, "train_data": train_data,
            "base_model": bench.base_model or source.get("model_dir"),
            "truth": {text_key(r["text"]): r["label"] for r in served}}


def _gate_columns(gate: dict) -> dict:
    """The offline gate's result as bench columns: accuracy per slice of both models, the failed checks."""
    return {"blessed": gate["blessed"],
            "current": {k: round(v["accuracy"], 4) for k, v in gate["slices"]["current"].items()},
            "candidate": {k: round(v["accuracy"], 4) for k, v in gate["slices"]["candidate"].items()},
            "failed_checks": [c["check"] + ":" + c["slice"] for c in gate["checks"] if not c["passed"]]}


def _candidate(bench, world, work, domain, server, *, strategy: str, seed: int, log, shuffle=False) -> dict:
    run_dir = work / (f"{strategy}-{seed}" + ("-shuffled" if shuffle else ""))
    config = IterateConfig(run_dir=str(run_dir), repo=str(world["repo"]), logs=[str(work / "logs")],
                           budget=bench.budget, strategy=strategy, seed=seed, golden=world["golden"],
                           target_slice=domain, base_model=bench.base_model, train_data=world["train_data"],
                           grpc=server.grpc_address, rest=server.rest_address,
                           model_config_file=str(world["config"]), deploy=False)
    started = time.time()
    first = run_iterate(config, log=lambda *_: None)
    if first["status"] == "waiting for annotations":
        config = dataclasses.replace(config, annotations=_answer(
            run_dir / "select" / "batch.jsonl", world["truth"], run_dir / "answers.jsonl",
            shuffle_seed=seed if shuffle else None))
        run_iterate(config, log=lambda *_: None)
    state = json.loads((run_dir / "state.json").read_text())["steps"]
    gate = state["gate"]
    batch = [json.loads(line) for line in (run_dir / "select" / "batch.jsonl").read_text().splitlines() if line]
    shifted_keys = {text_key(r["text"]) for r in world["served"][bench.served_mr:]}
    row = {"strategy": strategy + (" (shuffled labels)" if shuffle else ""), "seed": seed,
           "selected_shifted_share": sum(text_key(b["text"]) in shifted_keys for b in batch) / len(batch),
           "seconds": round(time.time() - started, 1), **_gate_columns(gate), "config": config,
           "run_dir": str(run_dir)}
    log(f"      {domain} {row['strategy']} seed {seed}: {row['candidate']} (was {row['current']}), "
        f"{'blessed' if row['blessed'] else 'refused'} in {row['seconds']}s")
    return row


def _all_shuffled(bench, world, work, domain, server, *, log) -> dict:
    """A candidate fine-tuned like the loop's on `replay` old examples whose labels are all permuted: the bad
    candidate the offline gate must refuse (deployed through `candidate`, so it skips select and train)."""
    from moatkit.data.dataset import read_records
    from moatkit.models.finetune import FinetuneConfig, finetune

    rng = np.random.default_rng(0)
    train = read_records(Path(world["train_data"]) / "train")
    train = [train[i] for i in rng.permutation(len(train))[:2000]]
    labels = rng.permutation([r["label"] for r in train])
    data = work / "shuffled-all-data"
    _write(data / "train", [dict(r, label=label) for r, label in zip(train, labels)], "shuffled-train")
    dev = read_records(Path(world["train_data"]) / "dev")[:600]
    for name in ("dev", "test"):
        _write(data / name, dev, f"mr-{name}")
    report = finetune(FinetuneConfig(task="classification", model=world["base_model"], data=str(data), target="label",
                                     run_dir=str(work / "shuffled-all-train"), epochs=2, learning_rate=3e-5,
                                     max_length=64, seed=0), verbose=0)
    run_dir = work / "shuffled-all"
    config = IterateConfig(run_dir=str(run_dir), repo=str(world["repo"]), logs=[str(work / "logs")],
                           candidate=report["saved_model_dir"], golden=world["golden"], target_slice=domain,
                           grpc=server.grpc_address, rest=server.rest_address,
                           model_config_file=str(world["config"]), deploy=False)
    run_iterate(config, log=lambda *_: None)
    gate = json.loads((run_dir / "state.json").read_text())["steps"]["gate"]
    row = {"strategy": "all training labels shuffled", "seed": 0, **_gate_columns(gate), "run_dir": str(run_dir)}
    log(f"      {domain} all labels shuffled: {row['candidate']}, {'blessed' if row['blessed'] else 'refused'}")
    return row


def constant_class_model(model_dir: str | Path, out: Path, *, class_id: int = 0) -> Path:
    """An HF classifier dir that answers `class_id` for every text, confidently (classifier kernel zeroed, bias
    ±4): a valid model that loads and serves, the misbehaving candidate the live gate must roll back."""
    from transformers import TFBertForSequenceClassification

    model_dir = Path(model_dir)
    model = TFBertForSequenceClassification.from_pretrained(model_dir)
    kernel, bias = model.classifier.weights
    kernel.assign(np.zeros(kernel.shape, np.float32))
    bias.assign(np.where(np.arange(bias.shape[0]) == class_id, 4.0, -4.0).astype(np.float32))
    model.save_pretrained(out)
    for path in model_dir.iterdir():  # tokenizer files and moat_task.json
        if path.suffix in (".json", ".txt") and not (out / path.name).exists():
            shutil.copy(path, out / path.name)
    return out


def _constant_class(bench, world, work, domain, server, *, log) -> dict:
    """The served checkpoint answering one class (constant_class_model), forced past the offline gate
    (skip_offline_gate) under `clients` concurrent clients: the live gate must roll it back with no failed request."""
    constant = constant_class_model(world["base_model"], work / "constant-model")
    config = IterateConfig(run_dir=str(work / "constant"), repo=str(world["repo"]), logs=[str(work / "logs")],
                           candidate=str(constant), skip_offline_gate=True, golden=world["golden"],
                           grpc=server.grpc_address, rest=server.rest_address, model_config_file=str(world["config"]))
    with BackgroundLoad(server.rest_address, "sentiment", [r["text"] for r in world["served"]],
                        clients=bench.clients) as load:
        outcome = run_iterate(config, log=log)
    live = json.loads((work / "constant" / "state.json").read_text())["steps"].get("live", {})
    return {"outcome": outcome["status"], "requests": load.sent, "failed_requests": load.failed,
            "failed_checks": [c["check"] for c in live.get("checks", []) if not c["passed"]],
            "versions_after": {s["version"]: s["state"] for s in grpc_model_status(server.grpc_address, "sentiment")}}


def run_domain(bench: IterateBench, domain: str, work: Path, *, log=print) -> dict:
    world = _world(bench, domain, work, log)
    rows = []
    with ServerProcess(model_config_file=world["config"]) as server:
        _replay(server.rest_address, "sentiment", [r["text"] for r in world["served"]], 8)
        for seed in range(bench.first_seed, bench.first_seed + bench.seeds):
            for strategy in ("loop", "random"):
                rows.append(_candidate(bench, world, work, domain, server, strategy=strategy, seed=seed, log=log))
        if bench.shuffled:
            rows.append(_candidate(bench, world, work, domain, server, strategy="loop", seed=0, log=log,
                                   shuffle=True))
            rows.append(_all_shuffled(bench, world, work, domain, server, log=log))
        deployed = None
        if bench.deploy and rows and "config" in rows[0]:
            deploy_config = dataclasses.replace(rows[0]["config"], deploy=True)
            with BackgroundLoad(server.rest_address, "sentiment", [r["text"] for r in world["served"]],
                                clients=bench.clients) as load:
                outcome = run_iterate(deploy_config, log=log)
            status = {s["version"]: s["state"] for s in grpc_model_status(server.grpc_address, "sentiment")}
            state = json.loads((Path(deploy_config.run_dir) / "state.json").read_text())["steps"]
            deployed = {"outcome": outcome["status"], "requests": load.sent, "failed_requests": load.failed,
                        "first_failure": load.failures[:1], "versions_after": status,
                        "live": {c["check"]: c["value"] for c in state.get("live", {}).get("checks", [])},
                        "transitions": [t["action"] for k in ("publish", "canary", "decide")
                                        for t in state.get(k, {}).get("transitions", [])]}
        rolled_back = _constant_class(bench, world, work, domain, server, log=log) if bench.rollback else None
    for row in rows:
        row.pop("config", None)
    return {"rows": rows, "deploy": deployed, "rollback": rolled_back}


def summary(domain: str, result: dict) -> dict:
    def mean(strategy, key):
        values = [r["candidate"][key] for r in result["rows"] if r["strategy"] == strategy]
        return round(float(np.mean(values)), 4) if values else None

    if not result["rows"]:
        return {"domain": domain}
    current = result["rows"][0]["current"]
    return {"domain": domain, "before": current, "loop": {k: mean("loop", k) for k in current},
            "random": {k: mean("random", k) for k in current}}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from moatkit.data.core.config import config_from_args, add_config_flags

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/iterate")
    add_config_flags(parser)
    args = parser.parse_args(argv)
    bench = config_from_args(IterateBench, args)
    if bench is None:
        return 0
    out = Path(args.out)
    results = {}
    for domain in bench.domains:
        work = out / "work" / domain
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        results[domain] = run_domain(bench, domain, work)
        results[domain]["summary"] = summary(domain, results[domain])
        print(json.dumps(results[domain]["summary"]), json.dumps(results[domain]["deploy"]),
              json.dumps(results[domain]["rollback"], default=str))
        (out / "iterate.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
