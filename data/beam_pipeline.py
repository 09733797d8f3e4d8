"""`moat data prepare` and `moat data dedup` as Apache Beam pipelines, for corpora beyond one machine.

Runs with the DirectRunner locally and on Flink / Spark / Dataflow through standard PipelineOptions (unknown
command-line flags go to them). It writes the same dataset dir as the local path — byte-identical shards, the
same report.json accounting and card.md — because every step reuses the local code: `read_source`,
`clean_record` (through data.prepare's per-input step), the dedup keys, `resolve_components`, `encode_shard`,
`write_metadata`, and data.prepare's `finish_dataset` for manifest.json, report.json and card.md.

prepare: one read task per source (a source's record ids count across its files, so a source is read in order)
→ Reshuffle → clean in parallel → dedup → shards (data/beam_transforms.py). Report rows, tallies and the card's
inputs are combined in the pipeline; the driver then writes manifest.json, report.json and card.md. Input and
output dirs must be on a filesystem the workers share.

Beam pins protobuf < 7 and TensorFlow here needs 7, so this runs in its own venv (`make beam-venv`):
`.venv-beam/bin/python -m moatkit.data.beam_pipeline prepare --config PREPARE.yaml [--set k=v] [Beam options]` or
`... dedup DATA --out OUT [--set k=v] [Beam options]`. Nothing on this path imports TensorFlow.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import shutil
import sys
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from moatkit.data import dedup as dd
from moatkit.data.core.files import new_staging_dir
from moatkit.data.beam_transforms import dedup_transform, no_dedup, read_summary, write_outputs
from moatkit.data.prepare_args import add_source_arguments, source_shortcuts


# === `moat data dedup` on Beam ===

def _prepare_out(out_dir) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("data-*.jsonl.gz"):
        old.unlink()
    return out


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
        write_outputs(pipeline, kept, resolved, str(out), shard_size, dropped=beam.pvalue.AsList(dropped_rows))
    summary = read_summary(out)
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
    from moatkit.data.prepare import clean_input
    pos, read = item
    name, clean, uri = inputs[pos[0]]
    status, value = clean_input(read, clean, name)
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


def _prepare_pipeline(config, *, names: list[str], staging: Path, pipeline_args: list[str] | None) -> None:
    inputs = [(n, config.clean.with_profile(s.profile), s.uri) for n, s in zip(names, config.sources)]
    with beam.Pipeline(options=PipelineOptions(pipeline_args or [])) as pipeline:
        read = (pipeline | "Sources" >> beam.Create(list(enumerate(config.sources)))
                | "Read" >> beam.FlatMap(_read, config.on_error)
                | "Spread" >> beam.Reshuffle())  # reading is one task per source; cleaning fans out
        cleaned = read | "Clean" >> beam.FlatMap(_clean, inputs).with_outputs("dropped", "skipped", main="kept")
        if config.deduplicate:
            kept, dropped, resolved = dedup_transform(cleaned.kept, config.dedup)
        else:
            kept, (dropped, resolved) = cleaned.kept, no_dedup(pipeline)
        rows = ((cleaned.dropped, dropped | "DedupRows" >> beam.Map(_dedup_row)) | "DropRows" >> beam.Flatten())
        heads = resolved | "ClusterHeads" >> beam.Map(_cluster_heads)
        head_texts = (kept | "HeadRecords" >> beam.Filter(lambda item, ids: item[1]["id"] in ids,
                                                          beam.pvalue.AsSingleton(heads))
                      | "HeadTexts" >> beam.Map(lambda item: (item[1]["id"], item[1]["text"])))
        write_outputs(pipeline, kept, resolved, str(staging), config.shard_size, dropped=beam.pvalue.AsList(rows),
                      skipped=beam.pvalue.AsList(cleaned.skipped), head_texts=beam.pvalue.AsList(head_texts))


def run_prepare(config, *, pipeline_args: list[str] | None = None) -> Path:
    """The Beam twin of `data.prepare.prepare`: the same dataset dir (shards byte for byte, manifest, report
    accounting, card), or the existing one unchanged when its cache key matches. No chunk checkpoints: an
    interrupted Beam job is retried by its runner."""
    from moatkit.data import prepare as local
    from moatkit.data.dataset import write_metadata
    from moatkit.data.readers import fingerprint, source_name

    config.validate()
    started = time.perf_counter()
    out = Path(config.out)
    prints = [fingerprint(s) for s in config.sources]
    if local.already_prepared(config, prints):
        return out
    names = [source_name(s) for s in config.sources]
    staging = new_staging_dir(out)
    staging.mkdir(parents=True)
    try:
        _prepare_pipeline(config, names=names, staging=staging, pipeline_args=pipeline_args)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pipeline_seconds = time.perf_counter() - started
    summary = read_summary(staging)
    stats = summary["stats"]
    drops = sorted(summary["dropped"], key=lambda d: d[0])
    label_counts = dict(stats["labels"])
    accounting = local.Accounting(
        dropped=[row for _, _, row in drops], by_source=_by_source(names, drops=drops, stats=stats),
        skipped_sources=[uri for _, uri in sorted(summary["skipped"])], pii=stats["pii"],
        languages=_languages(stats), dedup=_dedup_section(config, drops=drops, stats=stats, resolved=summary["dedup"]))
    return local.finish_dataset(
        config, prints=prints, staging=staging, accounting=accounting,
        write_manifest=functools.partial(write_metadata, staging, shards=summary["shards"], total=stats["total"],
                                         fields={"id", "text", *stats["fields"]}, label_counts=label_counts,
                                         labels=sorted({str(label) for label in label_counts}) or None),
        runner_fields={"runner": "beam"},
        card_inputs={"records": [], "histogram": list(_ordered(stats["histogram"]).items()),
                     "kept_texts": dict(summary["head_texts"])},
        started=started, seconds={"pipeline": pipeline_seconds})


def _by_source(names: list[str], *, drops: list, stats: dict) -> dict[str, collections.Counter]:
    """by_source as prepare tallies it: every source in config order (input = read/clean drops + records kept
    after cleaning, under the source's name), then dedup drops and kept records under their `source`."""
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
    return per_source


def _languages(stats: dict) -> dict:
    """{language: count} in Counter.most_common's order: by count, ties in the order the local path met them."""
    return {lang: count for lang, count, _ in sorted(stats["languages"], key=lambda row: (-row[1], row[2]))}


def _ordered(rows: list) -> dict:
    """[[key, count, order], ...] → {key: count} in the order the local path first met each key."""
    return {key: count for key, count, _ in sorted(rows, key=lambda row: row[2])}


def _dedup_section(config, *, drops: list, stats: dict, resolved: dict) -> dict | None:
    """The report's dedup section as data.dedup reports it; None when dedup was off or had nothing to read."""
    if not config.deduplicate or not stats["total"] + sum(1 for d in drops if d[0][0] == 1):
        return None
    bands, rows = dd.lsh_params(config.dedup.threshold, config.dedup.num_perm, config.dedup.bands, config.dedup.rows)
    reasons = collections.Counter(row["reason"] for _, _, row in drops if row["stage"] == "dedup")
    return {"config": dataclasses.asdict(config.dedup), "lsh": {"bands": bands, "rows": rows},
            "near_candidates": resolved["near_candidates"], "near_verified": resolved["near_verified"],
            "dropped_by_reason": dict(sorted(reasons.items())), "clusters": resolved["clusters"],
            "label_conflicts": resolved["label_conflicts"]}


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
