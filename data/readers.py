"""Readers for the sources `moat data prepare` takes: local files (txt, jsonl, csv/tsv, parquet, html, any of them
gzipped; a file, a folder or a glob), catalog entries (`catalog:NAME`) and Hugging Face datasets (`hf:NAME`).

A reader yields `(record, None)` for each record and `(None, drop)` for each input it could not turn into a record
(`drop` = {id, reason, origin}), so the prepare report accounts for every input. A problem raises one DataError that
names the file and line, unless the source is read with `on_error="skip"`, which turns per-line problems into drops.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import gzip
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Iterator, Literal

from moatkit.data.core.errors import DataError

FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet", "html")
_SUFFIX_FORMAT = {".txt": "txt", ".text": "txt", ".md": "txt", ".rst": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".html": "html",
                  ".htm": "html"}


@dataclasses.dataclass
class SourceConfig:
    """One input of `moat data prepare`."""
    uri: str = ""  # a file, folder or glob; `catalog:NAME` (see `moat data list`); `hf:NAME` (Hugging Face hub)
    name: str = ""  # the records' `source` field and id prefix; default: derived from uri
    format: Literal["auto", "txt", "jsonl", "csv", "tsv", "parquet", "html"] = "auto"
    text_field: str = "text"  # jsonl / csv / parquet / hf column holding the text
    text_pair_field: str = ""
    label_field: str = ""
    score_field: str = ""
    id_field: str = ""  # default: `<name>-<n>` in reading order
    txt_unit: Literal["line", "paragraph", "file"] = "line"  # how a txt file splits into records
    encoding: str = "utf-8"
    hf_config: str = ""
    split: str = "train"  # hf split
    profile: str = ""  # cleaning profile for this source; "" = the clean config's
    on_error: Literal["", "raise", "skip"] = ""  # "" = the prepare config's
    limit: int = 0  # read at most this many records (0 = all)
    license: str = ""

    def validate(self) -> None:
        if not self.uri:
            from moatkit.data.core.errors import ConfigError
            raise ConfigError("a source needs a uri", fix="e.g. uri: catalog:mr, uri: data/*.jsonl or uri: hf:imdb")


def source_name(source: SourceConfig) -> str:
    if source.name:
        return source.name
    if source.uri.startswith(("catalog:", "hf:")):
        return source.uri.split(":", 1)[1].replace("/", "-")
    stem = Path(source.uri.rstrip("/*")).name
    return re.sub(r"(\.(gz|jsonl|json|ndjson|csv|tsv|txt|parquet|html?|md|rst))+$", "", stem) or "source"


def source_files(source: SourceConfig) -> list[Path]:
    """The files of a local source in reading order (sorted), or a DataError when there are none."""
    uri = source.uri
    path = Path(uri).expanduser()
    if path.is_dir():
        from moatkit.data.dataset import DATASET_FORMAT, MANIFEST, read_manifest
        manifest = read_manifest(path) if (path / MANIFEST).is_file() else {}
        if manifest.get("format") == DATASET_FORMAT:  # a moatkit dataset dir: its shards, not its report or logs
            files = [path / shard["file"] for shard in manifest["shards"]]
        else:
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    elif any(ch in uri for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(uri), recursive=True) if Path(p).is_file())
    elif path.exists():
        files = [path]
    else:
        raise DataError(f"source '{uri}' does not exist", fix="check the path (a file, a folder or a glob)")
    if not files:
        raise DataError(f"source '{uri}' matches no files", fix="check the path or the glob pattern")
    return files


def file_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = _SUFFIX_FORMAT.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise DataError(f"cannot tell the format of '{path}' from its name",
                        fix="set the source's format: one of " + ", ".join(FORMATS))
    return fmt


def fingerprint(source: SourceConfig) -> dict:
    """What the prepare cache is keyed by: sha256 of every input file (or of the catalog entry's shards)."""
    if source.uri.startswith("catalog:"):
        from moatkit.data.dataset import read_manifest
        from moatkit.data.fetch import fetch
        manifest = read_manifest(fetch(source.uri.split(":", 1)[1], kind="dataset"))
        return {"catalog": manifest["provenance"], "shards": [s["sha256"] for s in manifest["shards"]]}
    if source.uri.startswith("hf:"):
        return {"hf": source.uri, "config": source.hf_config, "split": source.split,
                "fingerprint": getattr(_load_hf(source), "_fingerprint", None)}
    from moatkit.data.dataset import sha256_file
    files = []
    for path in source_files(source):
        try:
            files.append([str(path), sha256_file(path)])
        except OSError as err:
            files.append([str(path), f"unreadable: {err.__class__.__name__}"])
    return {"files": files}


def read_source(source: SourceConfig, *, on_error: str = "raise") -> Iterator[tuple[dict | None, dict | None]]:
    """Yields (record, None) or (None, drop) for every input of `source`, in a deterministic order."""
    on_error = source.on_error or on_error
    name = source_name(source)
    counter = _Counter(name, source, on_error)
    if source.uri.startswith("catalog:"):
        items = _read_catalog(source, name)
    elif source.uri.startswith("hf:"):
        items = _rows_to_records(_hf_rows(source), source, counter, origin=source.uri)
    else:
        items = (item for path in source_files(source) for item in _read_file(path, source, counter))
    emitted = 0
    for record, drop in items:
        if drop is not None:
            drop.setdefault("source", name)
        yield record, drop
        emitted += 1
        if source.limit and emitted >= source.limit:
            return
    if emitted == 0:
        if on_error == "skip":
            yield None, {"id": f"{name}-empty", "reason": "empty-source", "source": name, "origin": source.uri,
                         "placeholder": True}
            return
        raise DataError(f"source '{source.uri}' has no records",
                        fix="check the file contents, the format and txt_unit (or set on_error: skip)")


@dataclasses.dataclass
class _Counter:
    name: str
    source: SourceConfig
    on_error: str
    n: int = 0

    def next_id(self, row: dict | None = None) -> str:
        self.n += 1
        if row is not None and self.source.id_field and row.get(self.source.id_field) not in (None, ""):
            return str(row[self.source.id_field])
        return f"{self.name}-{self.n - 1}"

    def problem(self, message: str, *, reason: str, origin: str, fix: str) -> dict:
        """A drop for on_error=skip, else a DataError naming the place."""
        if self.on_error != "skip":
            raise DataError(f"{origin}: {message}", fix=fix + " (or set on_error: skip to drop and count such inputs)")
        return {"id": self.next_id(), "reason": reason, "origin": origin}


def _read_catalog(source: SourceConfig, name: str):
    from moatkit.data.dataset import REPORT, iter_records
    from moatkit.data.fetch import fetch
    out = fetch(source.uri.split(":", 1)[1], kind="dataset")
    try:
        upstream = json.loads((out / REPORT).read_text(encoding="utf-8")).get("dropped_records", [])
    except (OSError, json.JSONDecodeError):
        upstream = []
    # Records the catalog conversion dropped are inputs too: they stay in the account, tagged with the stage.
    for drop in upstream:
        yield None, {**drop, "stage": "fetch", "source": name}
    for record in iter_records(out):
        record = dict(record)
        record["source"] = name if source.name else record.get("source", name)
        yield record, None


def _read_bytes(path: Path, counter: _Counter) -> bytes | None:
    try:
        raw = path.read_bytes()
    except OSError as err:
        if counter.on_error == "skip":
            return None
        raise DataError(f"cannot read '{path}' ({err.strerror or err.__class__.__name__})",
                        fix="check the path and its permissions (or set on_error: skip)") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            if counter.on_error == "skip":
                return None
            raise DataError(f"'{path}' is a damaged gzip file ({err})",
                            fix="re-download or re-compress it (or set on_error: skip)") from None
    return raw


def _decode_lines(raw: bytes, path: Path, counter: _Counter) -> Iterator[tuple[int, str | None]]:
    """(line number, text) per line; text None for an undecodable line under on_error=skip."""
    encoding = counter.source.encoding
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        if counter.on_error != "skip":
            line = raw.count(b"\n", 0, err.start) + 1
            raise DataError(f"{path}:{line}: not valid {encoding} (byte {raw[err.start:err.start + 1].hex()} "
                            f"at offset {err.start})",
                            fix="set the source's encoding (e.g. encoding: latin-1), or on_error: skip") from None
        for line_no, line in enumerate(raw.split(b"\n"), start=1):
            try:
                yield line_no, line.decode(encoding).rstrip("\r")
            except UnicodeDecodeError:
                yield line_no, None
        return
    except LookupError:
        raise DataError(f"unknown encoding '{encoding}' for source '{counter.source.uri}'",
                        fix="use a Python codec name such as utf-8, latin-1, cp1252") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    for line_no, line in enumerate(text.split("\n"), start=1):
        yield line_no, line.rstrip("\r")


def _undecodable(path: Path, line_no: int, counter: _Counter) -> dict:
    return {"id": counter.next_id(), "reason": "decode-error", "origin": f"{path}:{line_no}"}


def _read_file(path: Path, source: SourceConfig, counter: _Counter):
    fmt = file_format(path, source.format)
    raw = _read_bytes(path, counter)
    if raw is None:
        yield None, {"id": f"{counter.name}:{path.name}", "reason": "unreadable-file", "origin": str(path)}
        return
    if fmt == "parquet":
        yield from _rows_to_records(_parquet_rows(raw, path, source), source, counter, origin=str(path))
    elif fmt == "html":
        yield from _read_html(raw, path, counter)
    elif fmt == "txt":
        yield from _read_txt(raw, path, counter)
    elif fmt == "jsonl":
        yield from _read_jsonl(raw, path, counter)
    else:
        yield from _read_csv(raw, path, counter, delimiter="\t" if fmt == "tsv" else ",")


def _read_txt(raw: bytes, path: Path, counter: _Counter):
    unit = counter.source.txt_unit
    buffer: list[str] = []
    for line_no, line in _decode_lines(raw, path, counter):
        if line is None:
            yield None, _undecodable(path, line_no, counter)
            continue
        if unit == "line":
            if line.strip():
                yield {"id": counter.next_id(), "text": line}, None
        elif unit == "paragraph" and not line.strip():
            if buffer:
                yield {"id": counter.next_id(), "text": "\n".join(buffer)}, None
            buffer = []
        else:
            buffer.append(line)
    if buffer and "\n".join(buffer).strip():
        yield {"id": counter.next_id(), "text": "\n".join(buffer)}, None


def _read_jsonl(raw: bytes, path: Path, counter: _Counter):
    for line_no, line in _decode_lines(raw, path, counter):
        if line is None:
            yield None, _undecodable(path, line_no, counter)
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            yield None, counter.problem(f"not a JSON object ({str(err)[:80]})", reason="malformed-json",
                                        origin=f"{path}:{line_no}", fix="write one JSON object per line")
            continue
        yield _row_to_record(row, counter, origin=f"{path}:{line_no}")


def _read_csv(raw: bytes, path: Path, counter: _Counter, *, delimiter: str):
    good, drops = [], []
    for line_no, line in _decode_lines(raw, path, counter):
        if line is None:
            drops.append(_undecodable(path, line_no, counter))
        else:
            good.append(line)
    yield from ((None, d) for d in drops)
    csv.field_size_limit(1 << 30)
    # TSV exports (like the Hutto & Gilbert files) leave quotes inside texts alone: no quoting for tabs.
    reader = csv.DictReader(io.StringIO("\n".join(good)), delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
    try:
        columns = reader.fieldnames or []
    except csv.Error as err:
        raise DataError(f"{path}:1: unreadable header ({err})", fix="check the delimiter and quoting") from None
    _check_columns(columns, counter.source, origin=str(path))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            yield None, counter.problem(f"malformed CSV row ({err})", reason="malformed-row",
                                        origin=f"{path}:{reader.line_num}", fix="fix the quoting on that line")
            continue
        line_no = reader.line_num
        if None in row:  # more cells than the header has columns: which one holds the text is unknowable
            extra = row.pop(None)
            yield None, counter.problem(f"{len(columns) + len(extra)} cells for {len(columns)} columns",
                                        reason="malformed-row", origin=f"{path}:{line_no}",
                                        fix="quote cells that contain the delimiter")
            continue
        yield _row_to_record(row, counter, origin=f"{path}:{line_no}")


def _check_columns(columns: list[str], source: SourceConfig, *, origin: str) -> None:
    wanted = [f for f in (source.text_field, source.text_pair_field, source.label_field, source.score_field,
                          source.id_field) if f]
    missing = [f for f in wanted if f not in columns]
    if missing:
        raise DataError(f"{origin}: no column '{missing[0]}' (columns: {', '.join(map(str, columns)) or 'none'})",
                        fix="set the source's text_field / label_field to one of the columns")


def _row_to_record(row: dict, counter: _Counter, *, origin: str) -> tuple[dict | None, dict | None]:
    source = counter.source
    text = row.get(source.text_field)
    if text is None:
        return None, counter.problem(f"no field '{source.text_field}'", reason=f"missing-field:{source.text_field}",
                                     origin=origin, fix="set the source's text_field to the field holding the text")
    if not isinstance(text, str):
        return None, counter.problem(f"field '{source.text_field}' is a {type(text).__name__}, not a string",
                                     reason="text-not-a-string", origin=origin, fix="store the text as a string")
    record = {"id": counter.next_id(row), "text": text}
    if source.text_pair_field and isinstance(row.get(source.text_pair_field), str):
        record["text_pair"] = row[source.text_pair_field]
    if source.label_field and row.get(source.label_field) not in (None, ""):
        label = row[source.label_field]
        record["label"] = label if isinstance(label, (str, int, bool)) else str(label)
    if source.score_field and row.get(source.score_field) not in (None, ""):
        try:
            record["score"] = float(row[source.score_field])
        except (TypeError, ValueError):
            return None, counter.problem(f"score {row[source.score_field]!r} is not a number", reason="bad-score",
                                         origin=origin, fix="fix the value or unset score_field")
    if isinstance(row.get("meta"), dict):
        record["meta"] = row["meta"]
    return record, None


def _rows_to_records(rows, source: SourceConfig, counter: _Counter, *, origin: str):
    for index, row in enumerate(rows):
        yield _row_to_record(row, counter, origin=f"{origin}[row {index}]")


def _parquet_rows(raw: bytes, path: Path, source: SourceConfig):
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.ParquetFile(pa.BufferReader(raw))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"'{path}' is not a readable parquet file ({err})",
                        fix="check the file (was it fully written?)") from None
    _check_columns(table.schema_arrow.names, source, origin=str(path))
    for batch in table.iter_batches(batch_size=4096):
        yield from batch.to_pylist()


_HTML_DROP_TAGS = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "template", "svg")


def _read_html(raw: bytes, path: Path, counter: _Counter):
    from bs4 import BeautifulSoup  # html.parser backend: no compiled dependency
    soup = BeautifulSoup(raw, "html.parser", from_encoding=counter.source.encoding)
    for tag in soup(_HTML_DROP_TAGS):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in soup.get_text("\n").split("\n")]
    text = "\n".join(line for line in lines if line)
    record = {"id": counter.next_id(), "text": text}
    if title:
        record["meta"] = {"title": title}
    yield record, None


def _load_hf(source: SourceConfig):
    try:
        import datasets
    except ImportError:
        raise DataError(f"source '{source.uri}' needs the Hugging Face `datasets` package",
                        fix="pip install 'moatkit[hf]' (or export the data to jsonl/parquet and use the file)") from None
    name = source.uri.split(":", 1)[1]
    try:
        return datasets.load_dataset(name, source.hf_config or None, split=source.split)
    except Exception as err:  # noqa: BLE001 — the hub client raises many unrelated types when offline
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise DataError(f"could not load Hugging Face dataset '{name}' ({err.__class__.__name__}: {str(err)[:160]})",
                        fix=("the hub is off: moatkit sets HF_HUB_OFFLINE=1 unless you set HF_HUB_OFFLINE=0 "
                             "with network access" if offline else "check the name, the network and the hub")
                        + "; or export the data to jsonl/parquet and use the file path") from None


def _hf_rows(source: SourceConfig):
    dataset = _load_hf(source)
    _check_columns(list(dataset.column_names), source, origin=source.uri)
    yield from dataset


def config_hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
