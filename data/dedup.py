"""Exact and near-duplicate removal: normalised hashes, MinHash LSH (datasketch), union-find clusters.

Both the local path (`deduplicate`, a datasketch `MinHashLSH` index) and the Apache Beam path
(data/beam_pipeline.py: `lsh_band_keys` + GroupByKey) find the same candidate pairs, because a pair is a
candidate exactly when the two signatures agree on one whole band. Candidates are then verified with the exact
Jaccard similarity of their shingle sets, and `resolve_components` turns the verified edges into clusters in
which the earliest record (input order) is kept. Nothing here imports TensorFlow: the Beam venv has none.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import random
import re
import time
import unicodedata
import zlib
from pathlib import Path
from typing import Iterable, Literal

from moatkit.data.core.errors import ConfigError, DataError

EXACT = "exact-duplicate"
NEAR = "near-duplicate"


@dataclasses.dataclass
class DedupConfig:
    exact: bool = True  # drop records whose normalised text (casefold, NFKC, no punctuation) is identical
    near: bool = True  # also drop near-duplicates (MinHash LSH, verified by exact shingle Jaccard); implies exact
    threshold: float = 0.5  # Jaccard similarity of shingle sets at or above which two records are near-duplicates
    num_perm: int = 128  # MinHash permutations
    shingle: Literal["char", "word"] = "char"
    ngram: int = 5  # shingle size, in characters or words
    seed: int = 1  # MinHash permutation seed: the same seed gives the same clusters
    bands: int | None = None  # LSH bands; None derives bands/rows from threshold (datasketch's optimum)
    rows: int | None = None
    score_tolerance: float = 1.0  # duplicates whose scores differ by more than this are flagged as conflicting
    eval_sample: int = 1000  # `moat data dedup` measures recall/precision on this many planted edits (0: off)

    def validate(self) -> "DedupConfig":
        if not (self.exact or self.near):
            raise ConfigError("dedup has nothing to do: exact and near are both false",
                              fix="set exact=true and/or near=true")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"dedup threshold={self.threshold} is out of range", fix="use 0 < threshold < 1")
        if self.num_perm < 2 or self.ngram < 1:
            raise ConfigError(f"dedup num_perm={self.num_perm} ngram={self.ngram} are invalid",
                              fix="use num_perm >= 2 and ngram >= 1")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError("dedup bands and rows must be set together", fix="set both, or neither")
        if self.bands is not None and (self.bands < 2 or self.rows < 1 or self.bands * self.rows > self.num_perm):
            raise ConfigError(f"dedup bands={self.bands} rows={self.rows} do not fit num_perm={self.num_perm}",
                              fix="use bands >= 2, rows >= 1 and bands * rows <= num_perm")
        return self


@dataclasses.dataclass
class DedupResult:
    kept: list[dict]  # input order preserved
    dropped: list[tuple[dict, str]]  # (record with meta.duplicate_of = kept id, reason)
    clusters: list[list[str]]  # ids, size >= 2, earliest (kept) first; ordered by their kept record
    label_conflicts: list[list[str]]  # the clusters whose labels differ or whose scores spread > score_tolerance
    stats: dict = dataclasses.field(default_factory=dict)

    def report(self) -> dict:
        reasons = collections.Counter(reason for _, reason in self.dropped)
        return {**self.stats, "input": len(self.kept) + len(self.dropped), "kept": len(self.kept),
                "dropped": len(self.dropped), "dropped_by_reason": dict(sorted(reasons.items())),
                "clusters": self.clusters, "label_conflicts": self.label_conflicts}


# === Normalisation and shingles ===

_NOT_WORD = re.compile(r"[^\w\s]+")


def normalize(text: str) -> str:
    """NFKC, casefold, punctuation and symbols to spaces, whitespace collapsed: the text that is hashed."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def record_text(record: dict) -> str:
    """The text a record is compared by: text, plus text_pair for pair records (a pair is a duplicate only if both
    sides are)."""
    pair = record.get("text_pair")
    return record["text"] if pair is None else f"{record['text']}\n{pair}"


def exact_key(text: str) -> str:
    return _key_of_normalized(normalize(text))


def _key_of_normalized(norm: str) -> str:
    return hashlib.sha1(norm.encode("utf-8")).hexdigest()


def shingles(text: str, config: DedupConfig) -> set[int]:
    """The shingle set of the normalised text, as 32-bit CRCs (fast, stable across processes and machines)."""
    return _shingles_of_normalized(normalize(text), config)


def _shingles_of_normalized(norm: str, config: DedupConfig) -> set[int]:
    if config.shingle == "word":
        units = norm.split()
        grams = [" ".join(units[i:i + config.ngram]) for i in range(max(1, len(units) - config.ngram + 1))]
    else:
        grams = [norm[i:i + config.ngram] for i in range(max(1, len(norm) - config.ngram + 1))]
    return {zlib.crc32(g.encode("utf-8")) for g in grams}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _identity(value: int) -> int:  # shingles are already 32-bit hashes
    return value


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int):
    from datasketch import MinHash
    return MinHash(num_perm=num_perm, seed=seed).permutations


@functools.lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int, bands: int | None = None, rows: int | None = None) -> tuple[int, int]:
    """(bands, rows): given, or datasketch's optimum for the threshold (equal false-positive/negative weights)."""
    if bands is not None:
        return bands, rows
    from datasketch import MinHashLSH
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def _config_lsh(config: DedupConfig) -> tuple[int, int]:
    return lsh_params(config.threshold, config.num_perm, config.bands, config.rows)


def minhash(shingle_set: set[int], config: DedupConfig):
    from datasketch import MinHash
    sketch = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=_identity, scheme="affine32",
                     permutations=_permutations(config.num_perm, config.seed))
    sketch.update_batch(sorted(shingle_set))
    return sketch


def band_keys(sketch, config: DedupConfig) -> list[str]:
    bands, rows = _config_lsh(config)
    values = sketch.hashvalues
    return [f"{band:03d}:{values[band * rows:(band + 1) * rows].tobytes().hex()}" for band in range(bands)]


def lsh_band_keys(text: str, config: DedupConfig) -> list[str]:
    """One key per LSH band; two texts are near-duplicate candidates iff they share a key (the Beam path)."""
    return band_keys(minhash(shingles(text, config), config), config)


# === Clusters ===

@dataclasses.dataclass(frozen=True)
class Node:
    """What cluster resolution needs to know about a record; `pos` is its place in the input order."""
    pos: tuple
    id: str
    key: str  # exact_key of the record text
    label: object = None
    score: float | None = None

    @classmethod
    def of(cls, pos, record: dict, key: str) -> "Node":
        return cls(pos=pos, id=str(record.get("id")), key=key, label=record.get("label"), score=record.get("score"))


def resolve_components(nodes: Iterable[Node], edges: Iterable[tuple], config: DedupConfig):
    """Union-find over verified duplicate edges (pairs of positions).

    Returns (decisions {pos: (reason, kept id)} for the records to drop, clusters, label_conflicts). The root of a
    component is its earliest record, which is kept; a member is an exact duplicate when its normalised text equals
    the kept record's, otherwise a near-duplicate (possibly through a chain of near-duplicates).
    """
    by_pos = {node.pos: node for node in nodes}
    parent: dict = {}

    def find(x):
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the earlier record stays the root
    members: dict = collections.defaultdict(list)
    for pos in parent:
        members[find(pos)].append(pos)
    decisions, clusters, conflicts = {}, [], []
    for root in sorted(members):
        group = sorted(set(members[root]) | {root})
        kept = by_pos[root]
        for pos in group[1:]:
            node = by_pos[pos]
            decisions[pos] = (EXACT if node.key == kept.key else NEAR, kept.id)
        cluster = [by_pos[pos] for pos in group]
        clusters.append([node.id for node in cluster])
        labels = {json.dumps(node.label, sort_keys=True) for node in cluster if node.label is not None}
        scores = [node.score for node in cluster if isinstance(node.score, (int, float))]
        if len(labels) > 1 or (scores and max(scores) - min(scores) > config.score_tolerance):
            conflicts.append(clusters[-1])
    return decisions, clusters, conflicts


def apply_decisions(records: list[dict], positions: list, decisions: dict) -> tuple[list[dict], list[tuple[dict, str]]]:
    kept, dropped = [], []
    for pos, record in zip(positions, records):
        if pos in decisions:
            reason, kept_id = decisions[pos]
            dropped.append(({**record, "meta": {**(record.get("meta") or {}), "duplicate_of": kept_id}}, reason))
        else:
            kept.append(record)
    return kept, dropped


# === The local (one machine) path ===

def deduplicate(records: list[dict], config: DedupConfig) -> DedupResult:
    """Exact groups by normalised hash, then MinHash LSH over one representative per exact group."""
    from datasketch import MinHashLSH

    config.validate()
    started = time.perf_counter()
    norms = [normalize(record_text(r)) for r in records]  # once per record: the exact key and shingles share it
    keys = [_key_of_normalized(n) for n in norms]
    nodes = [Node.of(i, r, k) for i, (r, k) in enumerate(zip(records, keys))]
    edges, first_with_key = [], {}
    for i, key in enumerate(keys):
        if key in first_with_key:  # with near=true alone these are found too (Jaccard 1), so always link them
            edges.append((first_with_key[key], i))
        else:
            first_with_key[key] = i
    candidates = verified = 0
    if config.near:
        lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, params=_config_lsh(config))
        shingle_sets = {}
        for i in first_with_key.values():
            shingle_sets[i] = _shingles_of_normalized(norms[i], config)
            sketch = minhash(shingle_sets[i], config)
            for j in lsh.query(sketch):
                candidates += 1
                if jaccard(shingle_sets[i], shingle_sets[j]) >= config.threshold:
                    verified += 1
                    edges.append((j, i))
            lsh.insert(i, sketch, check_duplication=False)
    decisions, clusters, conflicts = resolve_components(nodes, edges, config)
    kept, dropped = apply_decisions(records, list(range(len(records))), decisions)
    bands, rows = _config_lsh(config)
    stats = {"config": dataclasses.asdict(config), "lsh": {"bands": bands, "rows": rows},
             "near_candidates": candidates, "near_verified": verified,
             "seconds": round(time.perf_counter() - started, 3)}
    return DedupResult(kept=kept, dropped=dropped, clusters=clusters, label_conflicts=conflicts, stats=stats)


# === Measured quality: planted edits on real sentences ===

def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 3:
        return word + word[-1]
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("swap", "drop", "double", "replace"))
    if kind == "swap":
        return word[:i - 1] + word[i] + word[i - 1] + word[i + 1:]
    if kind == "drop":
        return word[:i] + word[i + 1:]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    return word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[i + 1:]


def plant_edits(text: str, rng: random.Random, vocabulary: list[str], *, edits: int) -> str:
    """`edits` random edits: word insertion/deletion, case change, punctuation change, typo."""
    words = text.split()
    for _ in range(edits):
        kind = rng.choice(("insert", "delete", "case", "punctuation", "typo"))
        i = rng.randrange(len(words))
        if kind == "insert":
            words.insert(rng.randrange(len(words) + 1), rng.choice(vocabulary))
        elif kind == "delete" and len(words) > 1:
            del words[i]
        elif kind == "case":
            words[i] = rng.choice((str.upper, str.lower, str.title))(words[i])
        elif kind == "punctuation":
            stripped = words[i].rstrip(".,;:!?")
            words[i] = stripped + rng.choice(("", ",", ".", "!", "?", ";", " -")) if stripped else "!"
        else:
            words[i] = _typo(words[i], rng)
    return " ".join(words)


def evaluate_near_dup(texts: list[str], config: DedupConfig, *, planted: int = 500, negatives: int = 1500,
                      max_edits: int = 3, seed: int = 0) -> dict:
    """Pair recall and precision of dedup on `planted` (original, edited copy) pairs among untouched negatives.

    Texts are first made unique by normalised text; each planted copy gets 1..max_edits random edits. A detected
    pair is any two records in one cluster; it is correct when it is an (original, its copy) pair.
    """
    unique = list({exact_key(t): t for t in texts if t and t.strip()}.values())
    if len(unique) < planted + negatives:
        raise DataError(f"near-dup eval needs {planted + negatives} distinct texts, got {len(unique)}",
                        fix="pass more texts or lower planted/negatives")
    rng = random.Random(seed)
    chosen = rng.sample(unique, planted + negatives)
    vocabulary = sorted({w for t in chosen for w in t.split()})
    records, truth = [], set()
    for i, text in enumerate(chosen):
        records.append({"id": f"o{i}", "text": text})
        if i < planted:
            records.append({"id": f"e{i}", "text": plant_edits(text, rng, vocabulary,
                                                                 edits=rng.randint(1, max_edits))})
            truth.add((f"o{i}", f"e{i}"))
    rng.shuffle(records)
    result = deduplicate(records, config)
    detected = {tuple(sorted((a, b), key=lambda x: (x[0] != "o", x)))
                for cluster in result.clusters for n, a in enumerate(cluster) for b in cluster[n + 1:]}
    hits = len(detected & truth)
    recall = hits / len(truth)
    precision = hits / len(detected) if detected else 1.0
    return {"recall": round(recall, 4), "precision": round(precision, 4), "planted_pairs": len(truth),
            "detected_pairs": len(detected), "correct_pairs": hits, "negatives": negatives, "max_edits": max_edits,
            "seed": seed, "threshold": config.threshold, "shingle": f"{config.shingle}-{config.ngram}",
            "num_perm": config.num_perm}


def bench_dedup(texts: list[str], config: DedupConfig | None = None) -> dict:
    """Throughput of `deduplicate` on these texts (one process, so per core)."""
    config = config or DedupConfig()
    records = [{"id": str(i), "text": t} for i, t in enumerate(texts) if t]
    megabytes = sum(len(r["text"].encode("utf-8")) for r in records) / 1e6
    started = time.perf_counter()
    result = deduplicate(records, config)
    seconds = time.perf_counter() - started
    return {"docs": len(records), "mb": round(megabytes, 3), "seconds": round(seconds, 3),
            "docs_per_s": round(len(records) / seconds, 1), "mb_per_s": round(megabytes / seconds, 3),
            "kept": len(result.kept), "dropped": len(result.dropped), "clusters": len(result.clusters)}


# === Dataset dir in, dataset dir out (`moat data dedup`) ===

def dedup_dataset(data_dir: str | Path, out_dir: str | Path, config: DedupConfig) -> dict:
    """Writes the deduplicated dataset dir; its report.json accounts for every input record and lists the
    clusters, label conflicts and the near-dup recall/precision measured on planted edits of this data."""
    from moatkit.data.dataset import REPORT, read_manifest, read_records, write_dataset

    config.validate()
    manifest = read_manifest(data_dir)
    records = read_records(data_dir, verify=True)
    if not records:
        raise DataError(f"dataset '{data_dir}' is empty", fix="check its report.json for dropped records")
    result = deduplicate(records, config)
    dropped = [{"id": r["id"], "reason": reason, "duplicate_of": r["meta"]["duplicate_of"]} for r, reason in result.dropped]
    write_dataset(out_dir, result.kept, name=manifest["name"], labels=manifest.get("labels"),
                  provenance={"dedup_of": str(Path(data_dir).resolve()), "source": manifest.get("provenance")},
                  license=manifest.get("license", "unknown"), dropped=dropped,
                  shard_size=max(s["records"] for s in manifest["shards"]) or 50_000)
    report = result.report()
    if config.near and config.eval_sample:
        texts = [record_text(r) for r in result.kept]
        planted = min(config.eval_sample // 4, len(texts) // 4)
        if planted >= 10:
            report["near_dup_eval"] = evaluate_near_dup(texts, config, planted=planted,
                                                        negatives=min(3 * planted, len(texts) - planted))
    path = Path(out_dir) / REPORT
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written["kept"] + written["dropped"] == report["input"] == len(records)
    path.write_text(json.dumps({**written, **report, "source": str(data_dir)}, indent=2, ensure_ascii=False),
                    encoding="utf-8")
    return report
