"""Labels that arrive after serving — a `.jsonl`, `.jsonl.gz` or `.csv` file of {text, label}, or a moatkit
dataset dir of such shards — joined to logged requests by the hash of the normalised text, so clients need no
request id and the TF Serving protocol stays as it is."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from moatkit.serving.errors import ServingConfigError

_SPACE = re.compile(r"\s+")


def text_key(text: str) -> str:
    return hashlib.sha1(_SPACE.sub(" ", text).strip().lower().encode("utf-8")).hexdigest()


def _lines(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        yield from f


def _records(path: Path):
    if path.is_dir():
        shards = sorted(path.glob("*.jsonl.gz")) + sorted(path.glob("*.jsonl"))
        if not shards:
            raise ServingConfigError(f"feedback dir '{path}' holds no .jsonl(.gz) shards",
                                     fix="pass a moatkit dataset dir or a .jsonl/.csv file of {text, label}")
        for shard in shards:
            yield from _records(shard)
    elif path.name.endswith((".jsonl", ".jsonl.gz")):
        for number, line in enumerate(_lines(path), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    yield {"_error": f"{path}:{number}: not JSON"}
    elif path.suffix == ".csv":
        yield from csv.DictReader(_lines(path))
    else:
        raise ServingConfigError(f"feedback file '{path}' is neither .jsonl(.gz), .csv nor a dataset dir",
                                 fix="write the labels as JSON lines {\"text\": …, \"label\": …}")


class Feedback:
    """{text key: label} with every input row counted: used, or skipped with a reason."""

    def __init__(self, path: str | Path, labels: list[str]):
        path = Path(path)
        if not path.exists():
            raise ServingConfigError(f"feedback path '{path}' does not exist", fix="check the feedback setting")
        self.labels, self.counts = dict.fromkeys(labels), Counter()
        self.by_key: dict[str, str] = {}
        self.unknown_labels: set[str] = set()
        for record in _records(path):
            self.counts["rows"] += 1
            if not isinstance(record, dict) or "_error" in record:
                self.counts["skipped_not_json"] += 1
            elif not str(record.get("text") or "").strip() or record.get("label") in (None, ""):
                self.counts["skipped_missing_text_or_label"] += 1
            elif str(record["label"]) not in self.labels:
                self.counts["skipped_unknown_label"] += 1
                self.unknown_labels.add(str(record["label"]))
            else:
                key = text_key(str(record["text"]))
                if key in self.by_key and self.by_key[key] != str(record["label"]):
                    self.counts["conflicting_labels"] += 1
                self.by_key[key] = str(record["label"])
                self.counts["used"] += 1

    def label_of(self, text: str) -> str | None:
        return self.by_key.get(text_key(text))
