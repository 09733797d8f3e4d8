"""The Beam transforms behind data/beam_pipeline.py: dedup at scale, shards in input order, the dataset summary.

dedup: exact duplicates (GroupByKey on the normalised hash) → near duplicates (GroupByKey on LSH band keys, pairs
in a bucket verified by exact shingle Jaccard) → connected components over the verified edges (only duplicate pairs
travel to one worker, never an index of the corpus). Shards: kept records ranked in input order (per-block counts,
so no worker holds the corpus) → one GroupByKey per shard → shard files byte-identical to `write_dataset`'s.
Summary: the tallies the driver needs for manifest.json, report.json and card.md, combined in the pipeline and
left in one file next to the shards. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from moatkit.data import dedup as dd
from moatkit.data.dataset import encode_shard

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


def write_outputs(pipeline, kept, resolved, out: str, shard_size: int, **views):
    """Writes the shards, then one summary file with the shard rows, the kept-record tallies, the dedup
    result (less its decisions) and `views` (side inputs)."""
    shards = shard_transform(kept, out, shard_size)
    stats = kept | "KeptSummary" >> beam.CombineGlobally(_KeptSummary())
    dedup = resolved | "DedupSummary" >> beam.Map(lambda r: {k: v for k, v in r.items() if k != "decisions"})
    (pipeline | "Once" >> beam.Create([None])
     | "Summary" >> beam.Map(_write_summary, out=out, shards=beam.pvalue.AsList(shards),
                             stats=beam.pvalue.AsSingleton(stats), dedup=beam.pvalue.AsSingleton(dedup), **views))


def read_summary(out: Path) -> dict:
    """The summary `write_outputs` left in `out` (the file is removed), shards in file order."""
    path = out / _SUMMARY
    summary = json.loads(path.read_text(encoding="utf-8"))
    path.unlink()
    summary["shards"].sort(key=lambda s: s["file"])
    if not summary["shards"]:  # write_dataset writes one empty shard for an empty dataset
        data = encode_shard([], "data-00000.jsonl.gz")
        (out / "data-00000.jsonl.gz").write_bytes(data)
        summary["shards"] = [{"file": "data-00000.jsonl.gz", "records": 0, "sha256": hashlib.sha256(data).hexdigest()}]
    return summary


def no_dedup(pipeline):
    """An empty dropped PCollection and a resolved singleton that finds nothing (dedup switched off)."""
    dropped = pipeline | "NoDuplicates" >> beam.Create([])
    resolved = pipeline | "NoComponents" >> beam.Create([{"decisions": {}, "clusters": [], "label_conflicts": [],
                                                          "near_candidates": 0, "near_verified": 0}])
    return dropped, resolved
