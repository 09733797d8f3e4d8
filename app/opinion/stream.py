"""Stream sources: dated text files and folders, a tailed file or folder, catalog texts replayed on a clock.

Every item has an id, text, time (Unix seconds), source and provenance (file:line, or the catalog entry and
record id). Nothing is dropped silently: a malformed line, a missing text or timestamp is counted in the
StreamReport with its place (the first `examples` of each reason are kept); an item older than the newest one
seen is kept and counted as out of order.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from moatkit.data.core.errors import ConfigError

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".csv")


@dataclasses.dataclass
class Item:
    id: str
    text: str
    time: float
    source: str
    provenance: str


@dataclasses.dataclass
class StreamReport:
    read: int = 0
    kept: int = 0
    out_of_order: int = 0
    dropped: Counter = dataclasses.field(default_factory=Counter)
    examples: dict = dataclasses.field(default_factory=dict)  # reason → [place, ...]
    max_examples: int = 20
    newest: float = float("-inf")

    def drop(self, reason: str, place: str) -> None:
        self.dropped[reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.max_examples:
            bucket.append(place)

    def keep(self, item: Item) -> Item:
        self.kept += 1
        if item.time < self.newest:
            self.out_of_order += 1
        self.newest = max(self.newest, item.time)
        return item

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "out_of_order": self.out_of_order,
                "dropped": dict(self.dropped), "dropped_examples": self.examples}


def parse_time(value) -> float | None:
    """ISO 8601 (a date, or date and time; naive means UTC) or Unix seconds → Unix seconds; None if unusable."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _rows(path: Path, lines: list[str] | None = None) -> Iterator[tuple[int, dict | None]]:
    """(line number, row dict or None when malformed) of a .jsonl(.gz) or .csv file."""
    if path.name.endswith(".csv"):
        raw = "".join(lines) if lines is not None else path.read_text(encoding="utf-8", errors="replace")
        reader = csv.DictReader(io.StringIO(raw))
        for row in reader:
            yield reader.line_num, (None if None in row or None in row.values() else row)
        return
    if lines is None:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        yield n, row if isinstance(row, dict) else None


def _item(row: dict | None, place: str, source: str, report: StreamReport, fields: dict) -> Item | None:
    report.read += 1
    if row is None:
        report.drop("malformed line", place)
        return None
    text = row.get(fields["text"])
    if not isinstance(text, str) or not text.strip():
        report.drop("missing text", place)
        return None
    when = parse_time(row.get(fields["time"]))
    if when is None:
        report.drop("missing timestamp" if row.get(fields["time"]) in (None, "") else "unreadable timestamp", place)
        return None
    return report.keep(Item(id=str(row.get("id") or place), text=text.strip(), time=when,
                            source=str(row.get(fields["source"]) or source), provenance=place))


def files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(FILE_SUFFIXES))
    if path.is_file():
        if not path.name.endswith(FILE_SUFFIXES):
            raise ConfigError(f"stream file '{path}' is not {' / '.join(FILE_SUFFIXES)}",
                              fix="write one JSON object per line ({\"text\": ..., \"time\": ...}) or a CSV with a header")
        return [path]
    raise ConfigError(f"stream source '{path}' does not exist", fix="pass a file, a folder, catalog:NAME or tail:PATH")


def read_files(path: Path, report: StreamReport, fields: dict) -> Iterator[Item]:
    for file in files_of(path):
        for n, row in _rows(file):
            item = _item(row, f"{file}:{n}", file.stem, report, fields)
            if item is not None:
                yield item


def tail(path: Path, report: StreamReport, fields: dict, *, stop, poll_s: float = 0.2) -> Iterator[Item | None]:
    """Follows JSON-lines files (a file, or every .jsonl in a folder): what is there, then lines appended and files
    added, until stop() is true. Yields None when idle, so a consumer can flush its batch. A partial last line
    waits for its newline."""
    offsets: dict[Path, int] = {}
    line_numbers: dict[Path, int] = {}
    pending: dict[Path, str] = {}
    while not stop():
        found = False
        for file in (files_of(path) if path.exists() else []):
            if not file.name.endswith(".jsonl"):
                continue  # compressed or CSV files are read whole as a file source, not followed
            size = file.stat().st_size
            if size <= offsets.get(file, 0):
                continue
            with open(file, "rb") as f:
                f.seek(offsets.get(file, 0))
                chunk = f.read(size - offsets.get(file, 0)).decode("utf-8", errors="replace")
            offsets[file] = size
            lines = (pending.pop(file, "") + chunk).splitlines(keepends=True)
            if lines and not lines[-1].endswith("\n"):
                pending[file] = lines.pop()
            first = line_numbers.get(file, 0)
            line_numbers[file] = first + len(lines)
            for n, row in _rows(file, lines):
                item = _item(row, f"{file}:{first + n}", file.stem, report, fields)
                if item is not None:
                    found = True
                    yield item
        if not found:
            yield None
            time.sleep(poll_s)


def replay_catalog(names: list[str], *, start: float, items_per_minute: float, limit: int | None, seed: int,
                   report: StreamReport) -> Iterator[Item]:
    """The catalog datasets' texts as one stream: shuffled and interleaved (seeded), one item every
    60 / items_per_minute seconds from `start`. The times are synthetic (provenance says so); the order is random,
    so a replay holds no real bursts."""
    from moatkit.data.dataset import read_records
    from moatkit.data.fetch import fetch

    pool = []
    for name in names:
        for record in read_records(fetch(name)):
            pool.append((name, record))
    order = np.random.default_rng(seed).permutation(len(pool))[:limit]
    step = 60.0 / items_per_minute
    for n, index in enumerate(order):
        name, record = pool[index]
        report.read += 1
        yield report.keep(Item(id=str(record["id"]), text=record["text"], time=start + n * step, source=name,
                               provenance=f"catalog:{name}#{record['id']} (replayed, synthetic time)"))
