"""`moat data prepare` and `moat data dedup` as Apache Beam pipelines, for corpora beyond one machine.

Runs with the DirectRunner locally and on Flink / Spark / Dataflow through standard PipelineOptions (unknown
command-line flags go to them). It writes the same dataset dir as the local path — byte-identical shards, the
same report.json accounting and card.md — because every step reuses the local code: `read_source`,
`clean_record` (through data.prepare's per-input step), the dedup keys, `resolve_components`, `encode_shard`,
`write_metadata`, `build_card`.

prepare: one read task per source (a source's record ids count across its files, so a source is read in order)
→ Reshuffle → clean in parallel → dedup. dedup: exact duplicates (GroupByKey on the normalised hash) → near
duplicates (GroupByKey on LSH band keys, pairs in a bucket verified by exact shingle Jaccard) → connected
components over the verified edges (only duplicate pairs travel to one worker, never an index of the corpus) →
kept records ranked in input order (per-block counts, so no worker holds the corpus) → one GroupByKey per shard
→ shard files. Report rows, tallies and the card's inputs are combined in the pipeline; the driver then writes
manifest.json, report.json and card.md. Input and output dirs must be on a filesystem the workers share.

Beam pins protobuf < 7 and TensorFlow here needs 7, so this runs in its own venv (`make beam-venv`):
`.venv-beam/bin/python -m moatkit.data.beam_pipeline prepare --config PREPARE.yaml [--set k=v] [Beam options]` or
`... dedup DATA --out OUT [--set k=v] [Beam options]`. Nothing on this path imports TensorFlow.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from moatkit.data import dedup as dd
from moatkit.data.dataset import encode_shard
from moatkit.data.prepare_args import add_source_arguments, source_shortcuts

_BLOCK = 10_000  # records per ranking block: the unit whose size bounds one worker's memory when ranking


# === Dedup at scale: band keys + GroupByKey ===

def _exact_groups(key_and_items):
    """(exact key, [(pos, node, text)]) → the representative (earliest) and an edge to it from every other."""
    _, items = key_and_items
    items = sorted(items, key=lambda item: item[0])
    first = items[0]
    yield beam.pvalue.TaggedOutput("representative", first)
    for item in items[1:]:
        yield beam.pvalue.TaggedOutput("edge", (first[1], item[1], None))


class _BandKeys(beam.DoFn):
    def __init__(self, config: dd.DedupConfig):
        self.config = config

    def process(self, item):
        pos, node, text = item
        for key in dd.lsh_band_keys(text, self.config):
            yield key, (pos, node, text)


class _VerifyBucket(beam.DoFn):
    """Every pair in one band bucket, keyed by its positions, with whether its exact shingle Jaccard reaches the
    threshold. Distinct pairs are what the local path's MinHashLSH queries return, so the counts match too."""

    def __init__(self, config: dd.DedupConfig):
        self.config = config

    def process(self, key_and_items):
        _, items = key_and_items
        if len(items) < 2:
            return
        items = sorted(items, key=lambda item: item[0])
        sets = [dd.shingles(text, self.config) for _, _, text in items]
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                verified = dd.jaccard(sets[i], sets[j]) >= self.config.threshold
                yield (items[i][0], items[j][0]), (items[i][1], items[j][1], verified)


def _resolve(pairs: list, config: dd.DedupConfig) -> dict:
    """pairs: (node, node, verified) with verified None for exact-duplicate edges."""
    edges = [(a, b) for a, b, verified in pairs if verified is not False]
    nodes = {node for edge in edges for node in edge}
    decisions, clusters, conflicts = dd.resolve_components(nodes, [(a.pos, b.pos) for a, b in edges], config)
    near = [verified for _, _, verified in pairs if verified is not None]
    return {"decisions": decisions, "clusters": clusters, "label_conflicts": conflicts,
            "near_candidates": len(near), "near_verified": sum(near)}


def _apply(item, resolved: dict):
    pos, record = item
    decision = resolved["decisions"].get(pos)
    if decision is None:
        yield pos, record
    else:
        reason, kept_id = decision
        yield beam.pvalue.TaggedOutput("dropped", (pos, {**record, "meta": {**(record.get("meta") or {}),
                                                                             "duplicate_of": kept_id}}, reason))


def dedup_transform(records, config: dd.DedupConfig):
    """PCollection of (pos, record) → (kept PCollection of (pos, record), dropped of (pos, record, reason),
    singleton PCollection of {decisions, clusters, label_conflicts, near_candidates, near_verified})."""
    keyed = records | "Nodes" >> beam.Map(
        lambda item: (item[0], dd.Node.of(item[0], item[1], dd.exact_key(dd.record_text(item[1]))),
                      dd.record_text(item[1])))
    grouped = (keyed | "ByExactKey" >> beam.Map(lambda item: (item[1].key, item))
               | "GroupExact" >> beam.GroupByKey()
               | "ExactEdges" >> beam.FlatMap(_exact_groups).with_outputs("representative", "edge"))
    pairs = [grouped.edge]
    if config.near:
        near = (grouped.representative | "BandKeys" >> beam.ParDo(_BandKeys(config))
                | "GroupBands" >> beam.GroupByKey()
                | "CandidatePairs" >> beam.ParDo(_VerifyBucket(config))
                | "GroupPairs" >> beam.GroupByKey()  # a pair shares up to `bands` buckets: count it once
                | "DistinctPairs" >> beam.Map(lambda pair_and_copies: next(iter(pair_and_copies[1]))))
        pairs.append(near)
    resolved = ((pairs | "AllPairs" >> beam.Flatten()) | "PairList" >> beam.combiners.ToList()
                | "Components" >> beam.Map(_resolve, config))
    split = records | "Apply" >> beam.FlatMap(_apply, beam.pvalue.AsSingleton(resolved)).with_outputs(
        "dropped", main="kept")
    return split.kept, split.dropped, resolved


# === Shards in input order, without a global sort ===

def _block(pos) -> tuple:
    return pos[:-1] + (pos[-1] // _BLOCK,)


def _rank_block(block_and_items, counts: dict, shard_size: int):
    block, items = block_and_items
    offset = sum(n for other, n in counts.items() if other < block)
    for rank, (_, record) in enumerate(sorted(items, key=lambda item: item[0]), start=offset):
        yield rank // shard_size, (rank, record)


def _write_shard(index_and_items, out: str):
    index, items = index_and_items
    name = f"data-{index:05d}.jsonl.gz"
    data = encode_shard([record for _, record in sorted(items, key=lambda item: item[0])], name)
    # UNCOMPRESSED: the bytes are already a gzip file; AUTO would gzip them again because of the .gz name.
    with FileSystems.create(FileSystems.join(out, name), compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)
    yield {"file": name, "records": len(items), "sha256": hashlib.sha256(data).hexdigest()}


def shard_transform(kept, out: str, shard_size: int):
    """(pos, record) → shard files named and filled exactly like `write_dataset`; yields their manifest rows."""
    blocks = kept | "ByBlock" >> beam.Map(lambda item: (_block(item[0]), item))
    counts = blocks | "CountBlocks" >> beam.combiners.Count.PerKey()
    return (blocks | "GroupBlocks" >> beam.GroupByKey()
            | "Rank" >> beam.FlatMap(_rank_block, beam.pvalue.AsDict(counts), shard_size)
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.FlatMap(_write_shard, out))


# === Dataset-level summary (what the driver needs for manifest.json, report.json and card.md) ===

def _first(table: dict, key, order) -> None:
    """table[key] = [count, earliest order]: counts that the driver orders the way the local path's dicts are."""
    entry = table.setdefault(key, [0, order])
    entry[0] += 1
    entry[1] = min(entry[1], order)


class _KeptSummary(beam.CombineFn):
    """Tallies of the kept records: count, schema fields and labels (what write_dataset counts), languages, PII,
    per-source and per-input counts (the prepare report) and the length histogram (the card)."""

    def create_accumulator(self):
        return {"total": 0, "fields": set(), "labels": {}, "languages": {}, "pii": collections.Counter(),
                "histogram": {}, "by_source": {}, "by_input": collections.Counter()}

    def add_input(self, acc, item):
        from moatkit.data.card import length_histogram
        from moatkit.data.dataset import OPTIONAL_FIELDS
        pos, record = item
        meta = record.get("meta") or {}
        acc["total"] += 1
        acc["fields"].update(k for k in OPTIONAL_FIELDS if k in record)
        if "label" in record:  # keyed by its JSON so 1 and "1" stay apart and survive the summary file
            acc["labels"].setdefault(json.dumps(record["label"]), [record["label"], 0])[1] += 1
        _first(acc["languages"], meta.get("lang", "und"), pos)
        acc["pii"].update(meta.get("pii", {}))
        _first(acc["histogram"], length_histogram([record])[0][0], len(record["text"].split()))
        _first(acc["by_source"], record.get("source"), pos)
        acc["by_input"][pos[0]] += 1
        return acc

    def merge_accumulators(self, accs):
        merged = self.create_accumulator()
        for acc in accs:
            merged["total"] += acc["total"]
            merged["fields"] |= acc["fields"]
            merged["pii"].update(acc["pii"])
            merged["by_input"].update(acc["by_input"])
            for key, (label, count) in acc["labels"].items():
                merged["labels"].setdefault(key, [label, 0])[1] += count
            for table in ("languages", "histogram", "by_source"):
                for key, (count, order) in acc[table].items():
                    entry = merged[table].setdefault(key, [0, order])
                    entry[0] += count
                    entry[1] = min(entry[1], order)
        return merged

    def extract_output(self, acc):
        return {**acc, "fields": sorted(acc["fields"]), "labels": list(acc["labels"].values()),
                "pii": dict(sorted(acc["pii"].items())), "by_input": sorted(acc["by_input"].items()),
                **{t: [[k, *v] for k, v in acc[t].items()] for t in ("languages", "histogram", "by_source")}}


_SUMMARY = ".beam-summary.json"


def _write_summary(_, *, out: str, **values):
    with FileSystems.create(FileSystems.join(out, _SUMMARY)) as handle:
        handle.write(json.dumps(values, ensure_ascii=False).encode())


def _finish(pipeline, kept, resolved, out: str, shard_size: int, **views):
    """Writes the shards, then one summary file with the shard rows, the kept-record tallies, the dedup
    result (less its decisions) and `views` (side inputs)."""
    shards = shard_transform(kept, out, shard_size)
    stats = kept | "KeptSummary" >> beam.CombineGlobally(_KeptSummary())
    dedup = resolved | "DedupSummary" >> beam.Map(lambda r: {k: v for k, v in r.items() if k != "decisions"})
    (pipeline | "Once" >> beam.Create([None])
     | "Summary" >> beam.Map(_write_summary, out=out, shards=beam.pvalue.AsList(shards),
                             stats=beam.pvalue.AsSingleton(stats), dedup=beam.pvalue.AsSingleton(dedup), **views))


def _read_summary(out: Path) -> dict:
    path = out / _SUMMARY
    summary = json.loads(path.read_text(encoding="utf-8"))
    path.unlink()
    summary["shards"].sort(key=lambda s: s["file"])
    if not summary["shards"]:  # write_dataset writes one empty shard for an empty dataset
        data = encode_shard([], "data-00000.jsonl.gz")
        (out / "data-00000.jsonl.gz").write_bytes(data)
        summary["shards"] = [{"file": "data-00000.jsonl.gz", "records": 0, "sha256": hashlib.sha256(data).hexdigest()}]
    return summary


def _prepare_out(out_dir) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("data-*.jsonl.gz"):
        old.unlink()
    return out


def _no_dedup(pipeline):
    """An empty dropped PCollection and a resolved singleton that finds nothing (dedup switched off)."""
    dropped = pipeline | "NoDuplicates" >> beam.Create([])
    resolved = pipeline | "NoComponents" >> beam.Create([{"decisions": {}, "clusters": [], "label_conflicts": [],
                                                          "near_candidates": 0, "near_verified": 0}])
    return dropped, resolved


# === `moat data dedup` on Beam ===

def _read_shard(indexed_shard, data_dir: str):
    import gzip
    index, file_name = indexed_shard
    with gzip.open(Path(data_dir) / file_name, "rt", encoding="utf-8") as handle:
        for n, line in enumerate(handle):
            yield (index, n), json.loads(line)


def run_dedup(data_dir, out_dir, config: dd.DedupConfig, *, pipeline_args: list[str] | None = None) -> dict:
    """The Beam twin of `data.dedup.dedup_dataset` (minus the planted-edit eval): same shards, same accounting."""
    from moatkit.data.dataset import read_manifest, write_metadata

    config.validate()
    manifest = read_manifest(data_dir)
    out = _prepare_out(out_dir)
    shard_size = max(s["records"] for s in manifest["shards"]) or 50_000
    with beam.Pipeline(options=PipelineOptions(pipeline_args or [])) as pipeline:
        records = (pipeline | "Shards" >> beam.Create(list(enumerate(s["file"] for s in manifest["shards"])))
                   | "Read" >> beam.FlatMap(_read_shard, str(data_dir)))
        kept, dropped, resolved = dedup_transform(records, config)
        dropped_rows = dropped | "DropRows" >> beam.Map(
            lambda item: (item[0], {"id": item[1]["id"], "reason": item[2],
                                    "duplicate_of": item[1]["meta"]["duplicate_of"]}))
        _finish(pipeline, kept, resolved, str(out), shard_size, dropped=beam.pvalue.AsList(dropped_rows))
    summary = _read_summary(out)
    stats, dedup = summary["stats"], summary["dedup"]
    dropped = [row for _, row in sorted(summary["dropped"], key=lambda d: d[0])]
    write_metadata(out, shards=summary["shards"], total=stats["total"], fields={"id", "text", *stats["fields"]},
                   label_counts=dict(stats["labels"]), name=manifest["name"], labels=manifest.get("labels"),
                   provenance={"dedup_of": str(Path(data_dir).resolve()), "source": manifest.get("provenance")},
                   license=manifest.get("license", "unknown"), dropped=dropped)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    bands, rows = dd.lsh_params(config.threshold, config.num_perm, config.bands, config.rows)
    report.update(input=stats["total"] + len(dropped), config=dataclasses.asdict(config),
                  lsh={"bands": bands, "rows": rows}, near_candidates=dedup["near_candidates"],
                  near_verified=dedup["near_verified"], clusters=dedup["clusters"],
                  label_conflicts=dedup["label_conflicts"], source=str(data_dir), runner="beam")
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


# === `moat data prepare` on Beam ===

def _read(indexed_source, on_error: str):
    """One source, read in order (its ids count across its files): ((source index, n), (record, drop))."""
    from moatkit.data.readers import read_source
    index, source = indexed_source
    for n, item in enumerate(read_source(source, on_error=on_error)):
        yield (index, n), item


def _clean(item, inputs: list):
    """data.prepare's per-input step: kept (pos, record), or a tagged drop row / skipped empty source."""
    from moatkit.data.prepare import _process
    pos, read = item
    name, clean, uri = inputs[pos[0]]
    status, value = _process(read, clean, name)
    if status == "kept":
        yield pos, value
    elif value.get("placeholder"):
        yield beam.pvalue.TaggedOutput("skipped", (pos[0], uri))
    else:  # (sort key, source index, row): read/clean drops come first in the report, then dedup's
        yield beam.pvalue.TaggedOutput("dropped", ((0, *pos), pos[0], value))


def _dedup_row(item):
    from moatkit.data.prepare import SNIPPET
    pos, record, reason = item
    return (1, *pos), pos[0], {"id": record["id"], "reason": reason, "stage": "dedup",
                               "source": record.get("source"), "duplicate_of": record["meta"]["duplicate_of"],
                               "text": record["text"][:SNIPPET]}


def _cluster_heads(resolved: dict) -> list:
    """Ids of the kept records the card shows (those of its five largest clusters)."""
    return sorted({cluster[0] for cluster in sorted(resolved["clusters"], key=len, reverse=True)[:5]})


def _ordered(rows: list) -> dict:
    """[[key, count, order], ...] → {key: count} in the order the local path first met each key."""
    return {key: count for key, count, _ in sorted(rows, key=lambda row: row[2])}


def _prepare_pipeline(config, inputs: list, staging: Path, pipeline_args: list[str] | None) -> None:
    with beam.Pipeline(options=PipelineOptions(pipeline_args or [])) as pipeline:
        read = (pipeline | "Sources" >> beam.Create(list(enumerate(config.sources)))
                | "Read" >> beam.FlatMap(_read, config.on_error)
                | "Spread" >> beam.Reshuffle())  # reading is one task per source; cleaning fans out
        cleaned = read | "Clean" >> beam.FlatMap(_clean, inputs).with_outputs("dropped", "skipped", main="kept")
        if config.deduplicate:
            kept, dropped, resolved = dedup_transform(cleaned.kept, config.dedup)
        else:
            kept, (dropped, resolved) = cleaned.kept, _no_dedup(pipeline)
        rows = ((cleaned.dropped, dropped | "DedupRows" >> beam.Map(_dedup_row)) | "DropRows" >> beam.Flatten())
        heads = resolved | "ClusterHeads" >> beam.Map(_cluster_heads)
        head_texts = (kept | "HeadRecords" >> beam.Filter(lambda item, ids: item[1]["id"] in ids,
                                                          beam.pvalue.AsSingleton(heads))
                      | "HeadTexts" >> beam.Map(lambda item: (item[1]["id"], item[1]["text"])))
        _finish(pipeline, kept, resolved, str(staging), config.shard_size, dropped=beam.pvalue.AsList(rows),
                skipped=beam.pvalue.AsList(cleaned.skipped), head_texts=beam.pvalue.AsList(head_texts))


def run_prepare(config, *, pipeline_args: list[str] | None = None) -> Path:
    """The Beam twin of `data.prepare.prepare`: the same dataset dir (shards byte for byte, manifest, report
    accounting, card), or the existing one unchanged when its cache key matches. No chunk checkpoints: an
    interrupted Beam job is retried by its runner."""
    from moatkit.data.core.errors import DataError
    from moatkit.data import prepare as local
    from moatkit.data.card import build_card, write_card_summary
    from moatkit.data.dataset import MANIFEST, REPORT, write_metadata
    from moatkit.data.readers import fingerprint, source_name

    config.validate()
    started = time.perf_counter()
    out = Path(config.out)
    prints = [fingerprint(s) for s in config.sources]
    key = local._cache_key(config, prints)
    if local._existing_output(out, key):
        return out
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataError(f"output dir '{out}' exists, is not empty and is not a dataset dir",
                        fix="choose a new --out, or empty that dir")
    names = [source_name(s) for s in config.sources]
    inputs = [(n, config.clean.with_profile(s.profile), s.uri) for n, s in zip(names, config.sources)]
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _prepare_pipeline(config, inputs, staging, pipeline_args)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pipeline_seconds = time.perf_counter() - started
    summary = _read_summary(staging)
    stats = summary["stats"]
    drops = sorted(summary["dropped"], key=lambda d: d[0])
    dropped_rows = [row for _, _, row in drops]

    # by_source as prepare tallies it: every source in config order (input = read/clean drops + records
    # kept after cleaning, under the source's name), then dedup drops and kept records under their `source`.
    per_source = {n: collections.Counter() for n in names}
    later = []  # (order, source, field, count): dedup drops, then kept records, each in input order
    for (group, *pos), index, row in drops:
        if group == 0:
            per_source[names[index]].update({"input": 1, "dropped_" + row["stage"]: 1})
        else:
            per_source[names[index]]["input"] += 1
            later.append(((0, *pos), row["source"], "dropped_dedup", 1))
    for index, count in stats["by_input"]:
        per_source[names[index]]["input"] += count
    for source, count, order in stats["by_source"]:
        later.append(((1, *order), source, "kept", count))
    for _, source, field, count in sorted(later, key=lambda entry: entry[0]):
        per_source.setdefault(source, collections.Counter())[field] += count

    dedup = None
    if config.deduplicate and stats["total"] + sum(1 for d in drops if d[0][0] == 1):
        bands, rows = dd.lsh_params(config.dedup.threshold, config.dedup.num_perm, config.dedup.bands,
                                    config.dedup.rows)
        reasons = collections.Counter(row["reason"] for _, _, row in drops if row["stage"] == "dedup")
        dedup = {"config": dataclasses.asdict(config.dedup), "lsh": {"bands": bands, "rows": rows},
                 "near_candidates": summary["dedup"]["near_candidates"],
                 "near_verified": summary["dedup"]["near_verified"], "dropped_by_reason": dict(sorted(reasons.items())),
                 "clusters": summary["dedup"]["clusters"], "label_conflicts": summary["dedup"]["label_conflicts"]}

    name = config.name or out.name
    licenses = sorted({s.license for s in config.sources if s.license} | local._catalog_licenses(config.sources))
    label_counts = dict(stats["labels"])
    manifest = write_metadata(
        staging, shards=summary["shards"], total=stats["total"], fields={"id", "text", *stats["fields"]},
        label_counts=label_counts, name=name, license=config.license or "; ".join(licenses) or "unknown",
        dropped=dropped_rows, labels=sorted({str(label) for label in label_counts}) or None,
        provenance={"prepared_from": [{"uri": s.uri, "name": n, **p}
                                      for s, n, p in zip(config.sources, names, prints)]},
        extra={"prepare": {"cache_key": key, "format": local.FORMAT, "config": dataclasses.asdict(config)}})
    report = json.loads((staging / REPORT).read_text(encoding="utf-8"))
    languages = sorted(stats["languages"], key=lambda row: (-row[1], row[2]))  # Counter.most_common's order
    report.update(
        input=stats["total"] + len(dropped_rows),
        dropped_by_stage=dict(sorted(collections.Counter(row["stage"] for row in dropped_rows).items())),
        by_source={n: dict(sorted(c.items())) for n, c in per_source.items()},
        skipped_sources=[uri for _, uri in sorted(summary["skipped"])],
        pii=stats["pii"],
        languages={lang: count for lang, count, _ in languages},
        dedup=dedup,
        runner="beam",
        seconds={"pipeline": round(pipeline_seconds, 3), "total": round(time.perf_counter() - started, 3)},
    )
    (staging / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    card = build_card(name=name, manifest=manifest, report=report, records=[],
                      histogram=[(label, count) for label, count, _ in sorted(stats["histogram"],
                                                                                key=lambda row: row[2])],
                      kept_texts=dict(summary["head_texts"]))
    (staging / "card.md").write_text(card, encoding="utf-8")
    if config.tensorboard:
        write_card_summary(card, staging / "tensorboard")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


# === Command line ===

def _innermost(err):
    """Beam re-raises a worker's error as a copy without its `fix`; the original is the copy's context."""
    from moatkit.data.core.errors import MoatError
    while isinstance(err.__context__, MoatError):
        err = err.__context__
    return err


def main(argv: list[str] | None = None) -> int:
    from moatkit.data.core.config import load_config
    from moatkit.data.core.errors import MoatError

    parser = argparse.ArgumentParser(
        prog="python -m moatkit.data.beam_pipeline", description=__doc__.splitlines()[0],
        epilog="Unknown flags go to Beam's PipelineOptions, e.g. --runner DirectRunner --direct_num_workers 2 "
               "--direct_running_mode multi_processing, or --runner FlinkRunner --flink_master HOST:8081.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser(
        "prepare", help="sources -> clean -> dedup -> dataset dir (like `moat data prepare`, same output)",
        description="The same PrepareConfig as `moat data prepare` (YAML with sources:, clean:, dedup:, out:), "
                    "the same shards, manifest, report.json and card.md. Example: python -m moatkit.data.beam_pipeline "
                    "prepare --source catalog:mr --source catalog:tweets --out data/sentiment --runner DirectRunner")
    add_source_arguments(p)
    p.add_argument("--config", metavar="FILE", help="YAML with PrepareConfig values")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p = verbs.add_parser("dedup", help="exact + near-duplicate removal of a dataset dir (like `moat data dedup`)")
    p.add_argument("data", help="dataset dir (with manifest.json)")
    p.add_argument("--out", required=True, help="output dataset dir")
    p.add_argument("--config", metavar="FILE", help="YAML with DedupConfig values")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args, beam_args = parser.parse_known_args(argv)
    try:
        if args.verb == "dedup":
            report = run_dedup(args.data, args.out, load_config(dd.DedupConfig, args.config, args.overrides),
                               pipeline_args=beam_args)
            print(json.dumps({k: report[k] for k in ("input", "kept", "dropped", "dropped_by_reason")}))
        else:
            from moatkit.data.prepare import PrepareConfig
            config = load_config(PrepareConfig, args.config, [*source_shortcuts(args), *args.overrides])
            out = run_prepare(config, pipeline_args=beam_args)
            report = json.loads((out / "report.json").read_text(encoding="utf-8"))
            print(json.dumps({"out": str(out), **{k: report[k] for k in ("input", "kept", "dropped",
                                                                          "dropped_by_stage")},
                              "card": str(out / "card.md")}))
    except MoatError as err:
        print(f"error: {_innermost(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
