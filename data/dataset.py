"""The dataset-dir artifact: gzipped JSONL shards + manifest.json + report.json.

Records are dicts with `id`, `text` and optionally `text_pair`, `label`, `score`, `source`, `meta`.
The manifest records schema, counts, labels, provenance, licence and a sha256 per shard; the report accounts for
every input record (kept, or dropped with a reason), so no stage loses data silently.
"""
from __future__ import annotations

import collections
import gzip
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Iterable, Iterator

from moatkit.data.core.errors import DataError

MANIFEST = "manifest.json"
DATASET_FORMAT = "moatkit-dataset/1"
REPORT = "report.json"
OPTIONAL_FIELDS = ("text_pair", "label", "score", "source", "meta")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_shard(records: list[dict], file_name: str) -> bytes:
    """The exact bytes of a shard file: the local writer and the Beam pipeline both use this, so their shards match."""
    buffer = io.BytesIO()
    # mtime=0 keeps shard bytes (and so checksums) reproducible across runs; the header carries the file name.
    with gzip.GzipFile(filename=file_name, mode="wb", fileobj=buffer, mtime=0) as handle:
        handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    return buffer.getvalue()


def write_dataset(out_dir: str | Path, records: Iterable[dict], *, name: str, provenance: dict, license: str,
                  dropped: Iterable[dict] = (), labels: list[str] | None = None, shard_size: int = 50_000,
                  extra: dict | None = None) -> dict:
    """Writes records as shards and returns the manifest. `dropped` items are {'id', 'reason', ...}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("data-*.jsonl.gz"):
        old.unlink()
    shards, buffer, fields = [], [], {"id", "text"}
    label_counts: collections.Counter = collections.Counter()

    def flush():
        path = out / f"data-{len(shards):05d}.jsonl.gz"
        path.write_bytes(encode_shard(buffer, path.name))
        shards.append({"file": path.name, "records": len(buffer), "sha256": sha256_file(path)})
        buffer.clear()

    total = 0
    for record in records:
        if not record.get("text"):
            raise DataError(f"record {record.get('id')!r} for dataset '{name}' has no text")
        fields.update(k for k in OPTIONAL_FIELDS if k in record)
        if "label" in record:
            label_counts[record["label"]] += 1
        buffer.append(record)
        total += 1
        if len(buffer) >= shard_size:
            flush()
    if buffer or not shards:
        flush()
    return write_metadata(out, shards=shards, total=total, fields=fields, label_counts=label_counts, name=name,
                          provenance=provenance, license=license, dropped=dropped, labels=labels, extra=extra)


def write_metadata(out_dir: str | Path, *, shards: list[dict], total: int, fields: Iterable[str],
                   label_counts: dict, name: str, provenance: dict, license: str, dropped: Iterable[dict] = (),
                   labels: list[str] | None = None, extra: dict | None = None) -> dict:
    """manifest.json and report.json for shards already written (by write_dataset, or by the Beam pipeline)."""
    out = Path(out_dir)
    dropped = list(dropped)
    reasons = collections.Counter(d["reason"] for d in dropped)
    manifest = {
        "name": name,
        "format": DATASET_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "schema": sorted(fields),
        "counts": {"records": total, "dropped": len(dropped), "by_label": dict(sorted(label_counts.items()))},
        "labels": labels if labels is not None else sorted(label_counts) or None,
        "provenance": provenance,
        "license": license,
        "shards": shards,
        **(extra or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    report = {"kept": total, "dropped": len(dropped), "dropped_by_reason": dict(reasons), "dropped_records": dropped}
    (out / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return manifest


def field_value(record: dict, path: str):
    """record['a']['b'] for path 'a.b'; None when any part is missing."""
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"'{data_dir}' is not a dataset dir (no {MANIFEST})",
                        fix="create one with `moat data fetch NAME` or `moat data split`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"'{path}' is not valid JSON ({err.msg} at line {err.lineno})",
                        fix="re-create the dataset dir") from None


def iter_records(data_dir: str | Path, *, verify: bool = False) -> Iterator[dict]:
    manifest = read_manifest(data_dir)
    for shard in manifest["shards"]:
        path = Path(data_dir) / shard["file"]
        if not path.is_file():
            raise DataError(f"shard '{path}' listed in the manifest is missing", fix="re-create the dataset dir")
        if verify and sha256_file(path) != shard["sha256"]:
            raise DataError(f"shard '{path}' does not match its manifest checksum",
                            fix="the file was modified or truncated; re-create the dataset dir")
        try:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                for line in handle:
                    yield json.loads(line)
        except (OSError, EOFError, json.JSONDecodeError) as err:
            raise DataError(f"shard '{path}' is damaged ({err.__class__.__name__})",
                            fix="re-create the dataset dir") from None


def read_records(data_dir: str | Path, *, verify: bool = False) -> list[dict]:
    return list(iter_records(data_dir, verify=verify))
