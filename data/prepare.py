"""`moat data prepare`: sources → clean → dedup → a dataset dir with report.json and a data card.

Every input ends in the account: kept, or dropped with a reason and the stage that dropped it (fetch, read,
clean, dedup), so `report["input"] == report["kept"] + report["dropped"]`. Work is checkpointed per source and
per chunk of `chunk_size` inputs in `work_dir`: an interrupted run resumes from the last finished chunk, and a
re-run with the same config and the same source bytes (sha256) returns the existing dir without writing.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import gzip
import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Literal

from moatkit.data.core.errors import ConfigError, DataError
from moatkit.data.core.files import new_staging_dir, publish_dir
from moatkit.data.clean import CleanConfig, clean_record
from moatkit.data.dataset import MANIFEST, REPORT, sha256_file, write_dataset
from moatkit.data.dedup import DedupConfig, deduplicate
from moatkit.data.readers import SourceConfig, config_hash, fingerprint, read_source, source_name

FORMAT = "moatkit-prepare/1"  # bump when the output of the same config changes, to invalidate caches
SNIPPET = 200  # characters of a dropped record's text kept in the report


@dataclasses.dataclass
class PrepareConfig:
    sources: list[SourceConfig] = dataclasses.field(default_factory=list)
    out: str = ""  # the dataset dir to write
    name: str = ""  # dataset name in the manifest; default: the out dir's name
    clean: CleanConfig = dataclasses.field(default_factory=CleanConfig)
    dedup: DedupConfig = dataclasses.field(default_factory=DedupConfig)
    deduplicate: bool = True
    on_error: Literal["raise", "skip"] = "raise"  # skip: bad lines/files are dropped and counted, not fatal
    shard_size: int = 50_000
    chunk_size: int = 5_000  # inputs per checkpoint
    work_dir: str = ""  # checkpoints; default: <out>.work next to the out dir
    keep_work: bool = False  # keep the checkpoints after a successful run
    license: str = ""  # the dataset's licence; default: the sources' licences joined
    tensorboard: bool = True  # the data card as a TensorBoard text summary in <out>/tensorboard
    progress: bool = True

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("prepare needs at least one source",
                              fix="e.g. moat data prepare --source catalog:mr --out data/mr (or sources: in YAML)")
        if not self.out:
            raise ConfigError("prepare needs an output dir", fix="pass --out DIR (or --set out=DIR)")
        names = [source_name(s) for s in self.sources]
        repeated = [n for n, c in collections.Counter(names).items() if c > 1]
        if repeated:
            raise ConfigError(f"two sources are both named '{repeated[0]}' (record ids would collide)",
                              fix="give each source its own name: (sources[i].name)")
        self.clean.validate()
        self.dedup.validate()
        for source in self.sources:
            source.validate()
            self.clean.with_profile(source.profile)
        if self.shard_size < 1 or self.chunk_size < 1:
            raise ConfigError("shard_size and chunk_size must be positive", fix="e.g. --set chunk_size=5000")


def _cache_key(config: PrepareConfig, prints: list[dict]) -> str:
    settings = dataclasses.asdict(config)
    for volatile in ("out", "work_dir", "keep_work", "progress"):
        settings.pop(volatile)
    return config_hash(FORMAT, settings, prints)


def _source_key(index: int, source: SourceConfig, config: PrepareConfig, print_: dict) -> str:
    clean = dataclasses.asdict(config.clean.with_profile(source.profile))
    return f"{index:02d}-{source_name(source)}-" + config_hash(FORMAT, dataclasses.asdict(source), clean,
                                                               config.on_error, print_)


def _existing_output(out: Path, key: str) -> bool:
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if manifest.get("prepare", {}).get("cache_key") != key or not (out / REPORT).is_file():
        return False
    return all((out / s["file"]).is_file() and sha256_file(out / s["file"]) == s["sha256"]
               for s in manifest.get("shards", []))


# === Per-source cleaning with chunk checkpoints ===

def clean_input(item: tuple[dict | None, dict | None], clean, name: str) -> list:
    """One input → ['kept', record] or ['drop', {id, reason, stage, source, ...}]."""
    record, drop = item
    if drop is not None:
        drop = dict(drop)
        drop.setdefault("stage", "read")
        return ["drop", drop]
    record.setdefault("source", name)
    cleaned, reason = clean_record(record, clean)
    if reason:
        return ["drop", {"id": record["id"], "reason": reason, "stage": "clean", "source": record["source"],
                         "text": record["text"][:SNIPPET]}]
    return ["kept", cleaned]


def _write_chunk(path: Path, results: list) -> None:
    partial = path.with_suffix(".partial")
    with gzip.open(partial, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    partial.rename(path)  # a chunk exists only once it is complete


def _read_chunk(path: Path) -> list:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _run_source(index: int, source: SourceConfig, config: PrepareConfig, work: Path, print_: dict,
                counters: dict) -> list:
    name = source_name(source)
    folder = work / _source_key(index, source, config, print_)
    done = folder / "done.json"
    if done.is_file():
        chunks = json.loads(done.read_text())["chunks"]
        counters["chunks_reused"] += chunks
        return [r for i in range(chunks) for r in _read_chunk(folder / f"chunk-{i:05d}.jsonl.gz")]
    folder.mkdir(parents=True, exist_ok=True)
    clean = config.clean.with_profile(source.profile)
    results: list = []
    items = read_source(source, on_error=config.on_error)
    from tqdm.auto import tqdm
    bar = tqdm(desc=f"prepare {name}", unit=" records", disable=not config.progress, leave=False)
    chunk_index = 0
    while True:
        chunk = list(itertools.islice(items, config.chunk_size))
        if not chunk:
            break
        path = folder / f"chunk-{chunk_index:05d}.jsonl.gz"
        if path.is_file():
            processed = _read_chunk(path)
            counters["chunks_reused"] += 1
        else:
            processed = [clean_input(item, clean, name) for item in chunk]
            _write_chunk(path, processed)
            counters["chunks_computed"] += 1
        results.extend(processed)
        bar.update(len(chunk))
        chunk_index += 1
    bar.close()
    done.write_text(json.dumps({"chunks": chunk_index, "source": dataclasses.asdict(source)}))
    return results


# === The whole run ===

@dataclasses.dataclass
class _Cleaned:
    """Every input after cleaning: kept records, drop rows, empty skipped sources and per-source tallies."""
    kept: list[dict] = dataclasses.field(default_factory=list)
    dropped: list[dict] = dataclasses.field(default_factory=list)
    skipped_sources: list[str] = dataclasses.field(default_factory=list)
    per_source: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)


def prepare(config: PrepareConfig) -> Path:
    """Runs the pipeline and returns the dataset dir (unchanged when the cache key matches)."""
    config.validate()
    started = time.perf_counter()
    out = Path(config.out)
    prints = [fingerprint(s) for s in config.sources]
    if already_prepared(config, prints):
        return out
    work = Path(config.work_dir) if config.work_dir else out.with_name(out.name + ".work")
    counters = collections.Counter(chunks_reused=0, chunks_computed=0)
    cleaned = _clean_sources(config, work=work, prints=prints, counters=counters)
    clean_seconds = time.perf_counter() - started
    dedup_report = _deduplicate(cleaned, config.dedup) if config.deduplicate and cleaned.kept else None
    for record in cleaned.kept:
        cleaned.per_source.setdefault(record.get("source"), collections.Counter())["kept"] += 1

    staging = new_staging_dir(out)
    labels = sorted({str(r["label"]) for r in cleaned.kept if "label" in r}) or None
    accounting = Accounting(
        dropped=cleaned.dropped, by_source=cleaned.per_source, skipped_sources=cleaned.skipped_sources,
        pii=_pii_totals(cleaned.kept), languages=dict(collections.Counter(
            (r.get("meta") or {}).get("lang", "und") for r in cleaned.kept).most_common()),
        dedup=dedup_report)
    finish_dataset(config, prints=prints, staging=staging, accounting=accounting,
                   write_manifest=functools.partial(write_dataset, staging, cleaned.kept, labels=labels,
                                                    shard_size=config.shard_size),
                   runner_fields={"checkpoints": dict(counters)}, card_inputs={"records": cleaned.kept},
                   started=started, seconds={"read_clean": clean_seconds})
    if not config.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _clean_sources(config: PrepareConfig, *, work: Path, prints: list[dict], counters: dict) -> _Cleaned:
    cleaned = _Cleaned()
    for index, source in enumerate(config.sources):
        tally = cleaned.per_source.setdefault(source_name(source), collections.Counter())
        for status, item in _run_source(index, source, config, work, prints[index], counters):
            if status == "kept":
                cleaned.kept.append(item)
                tally["input"] += 1
            elif item.get("placeholder"):  # an empty source under on_error=skip: no input, but reported
                cleaned.skipped_sources.append(source.uri)
            else:
                cleaned.dropped.append(item)
                tally["input"] += 1
                tally["dropped_" + item["stage"]] += 1
    return cleaned


def _deduplicate(cleaned: _Cleaned, config: DedupConfig) -> dict:
    """Drops the duplicates from `cleaned` (as dedup-stage drop rows) and returns the report's dedup section."""
    result = deduplicate(cleaned.kept, config)
    cleaned.kept = result.kept
    for record, reason in result.dropped:
        cleaned.dropped.append({"id": record["id"], "reason": reason, "stage": "dedup", "source": record.get("source"),
                                "duplicate_of": record.get("meta", {}).get("duplicate_of"),
                                "text": record["text"][:SNIPPET]})
        cleaned.per_source.setdefault(record.get("source"), collections.Counter())["dropped_dedup"] += 1
    return {k: v for k, v in result.report().items() if k not in ("input", "kept", "dropped")}


def _pii_totals(records: list[dict]) -> dict:
    totals: collections.Counter = collections.Counter()
    for record in records:
        totals.update((record.get("meta") or {}).get("pii", {}))
    return dict(sorted(totals.items()))


# === The start and the end both runners share (this one and data/beam_pipeline.py) ===

def already_prepared(config: PrepareConfig, prints: list[dict]) -> bool:
    """True when config.out holds this config's dataset, intact; raises when it holds something else."""
    out = Path(config.out)
    if _existing_output(out, _cache_key(config, prints)):
        return True
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataError(f"output dir '{out}' exists, is not empty and is not a dataset dir",
                        fix="choose a new --out, or empty that dir")
    return False


@dataclasses.dataclass
class Accounting:
    """What report.json tells beyond write_metadata's kept/dropped counts, gathered by either runner."""
    dropped: list[dict]  # drop rows: read and clean drops in input order, then dedup's
    by_source: dict[str, collections.Counter]
    skipped_sources: list[str]
    pii: dict
    languages: dict  # in Counter.most_common order
    dedup: dict | None


def finish_dataset(config: PrepareConfig, *, prints: list[dict], staging: Path, accounting: Accounting,
                   write_manifest: Callable[..., dict], runner_fields: dict, card_inputs: dict, started: float,
                   seconds: dict[str, float]) -> Path:
    """Writes manifest.json, report.json, card.md and its TensorBoard summary into `staging`, then makes it the
    dataset dir config.out.

    `write_manifest` is write_dataset or write_metadata with the shards bound (to write, or already written);
    it gets the dataset's name, licence, provenance, drop rows and prepare block. `runner_fields` and then the
    phase `seconds` (plus the total since `started`) end the report; `card_inputs` go to build_card.
    """
    from moatkit.data.card import build_card, write_card_summary

    out = Path(config.out)
    name = config.name or out.name
    manifest = write_manifest(
        name=name, license=config.license or "; ".join(_licenses(config.sources)) or "unknown",
        dropped=accounting.dropped,
        provenance={"prepared_from": [{"uri": s.uri, "name": source_name(s), **p}
                                      for s, p in zip(config.sources, prints)]},
        extra={"prepare": {"cache_key": _cache_key(config, prints), "format": FORMAT,
                           "config": dataclasses.asdict(config)}})
    report = json.loads((staging / REPORT).read_text(encoding="utf-8"))
    report.update(
        input=manifest["counts"]["records"] + len(accounting.dropped),
        dropped_by_stage=dict(sorted(collections.Counter(d["stage"] for d in accounting.dropped).items())),
        by_source={n: dict(sorted(c.items())) for n, c in accounting.by_source.items()},
        skipped_sources=accounting.skipped_sources, pii=accounting.pii, languages=accounting.languages,
        dedup=accounting.dedup, **runner_fields,
        seconds={**{phase: round(s, 3) for phase, s in seconds.items()},
                 "total": round(time.perf_counter() - started, 3)})
    (staging / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    card = build_card(name=name, manifest=manifest, report=report, **card_inputs)
    (staging / "card.md").write_text(card, encoding="utf-8")
    if config.tensorboard:
        write_card_summary(card, staging / "tensorboard")
    return publish_dir(staging, out)


def _licenses(sources: list[SourceConfig]) -> list[str]:
    """The sources' own licences and those of their catalog entries, sorted."""
    from moatkit.data.catalog import get_entry
    catalog = {get_entry(s.uri.split(":", 1)[1]).license for s in sources if s.uri.startswith("catalog:")}
    return sorted({s.license for s in sources if s.license} | catalog)
