"""Seeded, stratified train/dev/test splits that never leak a duplicate text across splits."""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import random
import unicodedata
from pathlib import Path

from moatkit.data.core.errors import ConfigError, DataError
from moatkit.data.dataset import field_value, read_manifest, read_records, write_dataset

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass
class SplitConfig:
    dev: float = 0.1
    test: float = 0.2  # unused for a source that carries its official test split (then dev is a fraction of the rest)
    seed: int = 13
    stratify: bool = True
    stratify_field: str = "label"  # record field to stratify by (dots reach into nested dicts: meta.fine)

    def validate(self):
        if not (0 <= self.dev < 1 and 0 < self.test < 1 and self.dev + self.test < 1):
            raise ConfigError(f"split fractions dev={self.dev} test={self.test} are invalid",
                              fix="use 0 <= dev, 0 < test and dev + test < 1")


def _normalized(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def split_records(records: list[dict], config: SplitConfig) -> dict[str, list[dict]]:
    """Groups records sharing a normalized text, then assigns whole groups so duplicates stay together."""
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for record in records:
        groups[_normalized(record["text"])].append(record)
    strata: dict = collections.defaultdict(list)
    for members in groups.values():
        key = field_value(members[0], config.stratify_field) if config.stratify else None
        strata[key].append(members)
    rng = random.Random(config.seed)
    out = {name: [] for name in SPLITS}
    for key in sorted(strata, key=str):
        stratum = strata[key]
        rng.shuffle(stratum)
        n = len(stratum)
        n_test = round(n * config.test)
        n_dev = round(n * config.dev)
        for index, members in enumerate(stratum):
            name = "test" if index < n_test else "dev" if index < n_test + n_dev else "train"
            out[name].extend(members)
    for name in SPLITS:
        rng.shuffle(out[name])
    return out


def given_test_split(records: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(test, rest, repeats) for a source that carries its official test split as `meta.split: test`
    (trec-official); all empty lists but `rest` otherwise. Published results are on that split, so it is kept
    whole; `repeats` are the other records whose text is also a test text, left out of train and dev so no test
    text is trained on."""
    test, others = [], []
    for record in records:
        (test if field_value(record, "meta.split") == "test" else others).append(record)
    if not test:
        return [], records, []
    test_texts = {_normalized(r["text"]) for r in test}
    rest = [r for r in others if _normalized(r["text"]) not in test_texts]
    repeats = [r for r in others if _normalized(r["text"]) in test_texts]
    return test, rest, repeats


def split_dataset(data_dir: str | Path, out_dir: str | Path, config: SplitConfig) -> dict:
    """Writes out_dir/{train,dev,test}/ dataset dirs and out_dir/report.json; returns the report."""
    manifest = read_manifest(data_dir)
    records = read_records(data_dir, verify=True)
    if not records:
        raise DataError(f"dataset '{data_dir}' is empty", fix="check its report.json for dropped records")
    test, rest, repeats = given_test_split(records)
    if test:  # the source's official test split, as published; dev comes out of the rest
        parts = {**split_records(rest, dataclasses.replace(config, test=0.0)), "test": test}
    else:
        parts = split_records(records, config)
    out = Path(out_dir)
    for name, part in parts.items():
        write_dataset(out / name, part, name=f"{manifest['name']}-{name}", labels=manifest.get("labels"),
                      provenance={"split_of": str(Path(data_dir).resolve()), "split": name,
                                  "config": dataclasses.asdict(config), "source": manifest.get("provenance")},
                      license=manifest.get("license", "unknown"))
    report = {"source": str(data_dir), "config": dataclasses.asdict(config),
              "sizes": {name: len(part) for name, part in parts.items()},
              "by_label": {name: dict(collections.Counter(r.get("label") for r in part)) for name, part in parts.items()}}
    if test:
        report["given_test_split"] = {"test": len(test), "left_out_repeating_a_test_text": [r["id"] for r in repeats]}
    assert sum(report["sizes"].values()) + len(repeats) == len(records)  # every input lands in one split or is listed
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def ensure_splits(data: str, config: SplitConfig) -> Path:
    """Resolves `data` (a split dir, a dataset dir or a catalog name) to a dir holding train/dev/test."""
    from moatkit.data.fetch import fetch, moat_home

    path = Path(data)
    if all((path / name / "manifest.json").is_file() for name in SPLITS):
        return path
    if (path / "manifest.json").is_file():
        source = path
    elif path.exists() or "/" in data:
        raise DataError(f"'{data}' is neither a dataset dir nor a dir with train/dev/test dataset dirs",
                        fix="pass a catalog name (e.g. mr), a dataset dir, or the output of `moat data split`")
    else:
        source = fetch(data, kind="dataset")
    # Cached splits are keyed by the split config and the source's shard checksums, so a changed config or a
    # re-fetched source never reuses stale splits.
    manifest = read_manifest(source)
    shards = [s["sha256"] for s in manifest["shards"]]
    key = hashlib.sha1(json.dumps([dataclasses.asdict(config), shards]).encode()).hexdigest()[:12]
    out = moat_home() / "splits" / f"{manifest['name']}-{key}"
    if not (out / "report.json").is_file():
        split_dataset(source, out, config)
    return out
