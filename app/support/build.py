"""`moat support build`: knowledge base → served encoder + router → index → fitted policy → evaluation report.

Everything lands in `out` (kb.jsonl, index.npz, policy.json, support.json, report.json/.md, the router's data and
run) and the two models in `repo`. A rebuild reuses what has not changed: an encoder version exported with the
same checkpoint and max_length, and a router trained on the same data with the same settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from moatkit.app.support.assistant import SUPPORT_FILE
from moatkit.app.support.config import SupportConfig
from moatkit.app.support.evaluate import evaluate
from moatkit.app.support.index import build_index
from moatkit.app.support.kb import load_knowledge_base, save_knowledge_base
from moatkit.app.support.models import LocalModels
from moatkit.app.support.report import write_report
from moatkit.data.core.errors import DataError

SPLITS = ("train", "dev", "test")


def split_questions(entries, config: SupportConfig) -> dict[str, str]:
    """entry id → train | dev | test, stratified by department and seeded; each department keeps a train
    question where it has one to spare."""
    rng = np.random.default_rng(config.seed)
    by_department: dict = {}
    for entry in entries:
        by_department.setdefault(entry.department, []).append(entry.id)
    split = {}
    for department in sorted(by_department, key=str):
        ids = [by_department[department][i] for i in rng.permutation(len(by_department[department]))]
        test = int(round(config.test_share * len(ids))) if len(ids) > 2 else 0
        dev = int(round(config.dev_share * len(ids))) if len(ids) > 2 else 0
        for n, entry_id in enumerate(ids):
            split[entry_id] = "test" if n < test else "dev" if n < test + dev else "train"
    return split


def ensure_encoder(config: SupportConfig, log) -> Path:
    """A version of the encoder under repo/encoder_name with the same checkpoint and max_length, or a new one."""
    from moatkit.models.checkpoints import fetch_model
    from moatkit.models.sentence_encoder import ENCODER_FILE, EncoderExportConfig, export_sentence_encoder

    model_dir = str(Path(config.encoder_model) if Path(config.encoder_model).is_dir() else fetch_model(config.encoder_model))
    base = Path(config.repo) / config.encoder_name
    for version in sorted((p for p in base.glob("*") if p.name.isdigit()), key=lambda p: -int(p.name)):
        meta = json.loads((version / ENCODER_FILE).read_text()) if (version / ENCODER_FILE).is_file() else {}
        if meta.get("model") == model_dir and meta.get("max_length") == config.encoder_max_length:
            log(f"encoder: reusing {version}")
            return version
    log(f"encoder: exporting {config.encoder_model} (max_length {config.encoder_max_length}) to {base}")
    result = export_sentence_encoder(EncoderExportConfig(model=config.encoder_model, repo=config.repo,
                                                         name=config.encoder_name,
                                                         max_length=config.encoder_max_length))
    return Path(result["version_dir"])


def _router_records(entries, split: dict[str, str], answers_as_examples: bool) -> dict[str, list[dict]]:
    records = {name: [] for name in SPLITS}
    for entry in entries:
        if entry.department is None:
            continue
        records[split[entry.id]].append({"id": f"{entry.id}#q", "text": entry.question, "label": entry.department})
        if split[entry.id] == "train":  # held-out entries' paraphrases would leak their questions
            records["train"] += [{"id": f"{entry.id}#p{n}", "text": p, "label": entry.department}
                                 for n, p in enumerate(entry.paraphrases)]
        if answers_as_examples:  # every answer, held-out ones too: answers are the index, never queries
            records["train"].append({"id": f"{entry.id}#a", "text": entry.answer[:2000], "label": entry.department})
    return records


def train_router(config: SupportConfig, kb, split: dict[str, str], log) -> Path | None:
    """`moat finetune` on the departments, exported as its own model; None when there is nothing to route."""
    from moatkit.data.core.files import staged_dir
    from moatkit.data.dataset import write_dataset
    from moatkit.models.export import ExportConfig, export_text_model
    from moatkit.models.finetune import FinetuneConfig, finetune

    labels = kb.departments()
    if not config.router.enabled or len(labels) < 2:
        log("router: off" if not config.router.enabled else "router: skipped (fewer than two departments)")
        return None
    records = _router_records(kb.entries, split, config.router.answers_as_examples)
    if not records["dev"] or not records["test"]:
        raise DataError("the knowledge base is too small to hold out dev and test questions for the router",
                        fix="add entries (3+ per department) or set router.enabled=false")
    settings = {"records": records, "router": dataclasses.asdict(config.router), "seed": config.seed}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    run_dir = Path(config.out) / "router" / digest
    data_dir, model_dir = run_dir / "data", run_dir / "run" / "model"
    if not (data_dir / "test" / "manifest.json").is_file():
        with staged_dir(data_dir) as staging:
            for name in SPLITS:
                write_dataset(staging / name, records[name], name=f"support-router-{name}", labels=labels,
                              license=kb.license or "the knowledge base's", provenance={"kb": config.kb})
    if not (run_dir / "run" / "report.json").is_file():
        log(f"router: fine-tuning {config.router.model} on {len(records['train'])} texts, {len(labels)} departments")
        r = config.router
        finetune(FinetuneConfig(task="classification", model=r.model, data=str(data_dir), target="label",
                                run_dir=str(run_dir / "run"), epochs=r.epochs, learning_rate=r.learning_rate,
                                batch_size=r.batch_size, max_length=r.max_length, seed=config.seed,
                                patience=r.epochs, log_every=20), verbose=1)
    exported = run_dir / "exported.json"
    previous = Path(json.loads(exported.read_text())["version_dir"]) if exported.is_file() else None
    if previous is not None and previous.is_dir():
        return previous
    result = export_text_model(ExportConfig(model_dir=str(model_dir), repo=config.repo, name=config.router.name))
    exported.write_text(json.dumps(result, indent=2))
    log(f"router: exported {result['version_dir']}")
    return Path(result["version_dir"])


def build_support(config: SupportConfig, *, log=print) -> dict:
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    kb = load_knowledge_base(config.kb, strict_conflicts=config.strict_conflicts)
    save_knowledge_base(kb, out)
    log(f"knowledge base: {len(kb.entries)} entries, departments {kb.departments()}, "
        f"{len(kb.report.get('conflicts', []))} conflicts")
    if len(kb.entries) < 2:
        raise DataError(f"the knowledge base has {len(kb.entries)} entries", fix="an assistant needs 2 or more")
    split = split_questions(kb.entries, config)
    held = {name: sum(v == name for v in split.values()) for name in ("dev", "test")}
    if not all(held.values()):
        raise DataError(f"{len(kb.entries)} entries leave {held['dev']} dev and {held['test']} test questions: the "
                        "thresholds are fitted on dev and the report measured on test",
                        fix="add entries (3 or more per department)")
    encoder_dir = ensure_encoder(config, log)
    router_dir = train_router(config, kb, split, log)
    models = LocalModels(encoder_dir, router_dir)
    evaluation, policy, weight, vectors = evaluate(config, kb.entries, split, models, log=log)
    build_index(kb.entries, vectors, hybrid_weight=weight).save(out)  # production: every question is a key
    policy.save(out)
    support = {"encoder": {"name": config.encoder_name, "version": int(encoder_dir.name), "dir": str(encoder_dir)},
               "router": (None if router_dir is None else
                          {"name": config.router.name, "version": int(router_dir.name), "dir": str(router_dir)}),
               "labels": models.labels, "top_k": config.top_k, "hybrid_weight": weight, "license": kb.license,
               "entries": len(kb.entries)}
    (out / SUPPORT_FILE).write_text(json.dumps(support, indent=2))
    report = {"support": support, "kb": kb.report, "split": {s: sum(v == s for v in split.values()) for s in SPLITS},
              "seed": config.seed, **evaluation}
    write_report(out, report)
    return report
