"""Reads the server's request logs (TFRecord files of tensorflow.serving.PredictionLog) back into one row per text.

Every record is accounted for in `LogReader.counts`: parsed, or skipped with a reason (another model, no text
input, a truncated last record, a bad checksum). The TFRecord framing is read here rather than with
tf.data/tf_record_iterator because follow mode must resume each file at a byte offset and must tell "the server
is still writing this record" from "the server died mid-record"; TensorFlow's readers can do neither.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import struct
from collections import Counter
from pathlib import Path

import google_crc32c
import numpy as np

_HEADER = 12  # uint64 length + masked crc32c of the length
_FOOTER = 4  # masked crc32c of the data


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclasses.dataclass
class LoggedText:
    """One text of a logged request with what the model answered for it."""
    time: float  # the record's timestamp_secs
    model: str
    version: int
    signature: str
    kind: str  # predict | classify | regress
    text: str
    probabilities: np.ndarray | None = None  # (labels,) in the model's label order; None for regressors
    score: float | None = None  # regressors
    source: str = ""  # file:record, to find the record again


@dataclasses.dataclass
class _FileState:
    offset: int = 0
    records: int = 0
    broken: bool = False  # a bad checksum: the framing cannot be trusted past it


class LogReader:
    """Reads new records from log files matching `paths` (files, dirs of *.tfrecord, globs, or a server's
    `filename_prefix`). `poll()` returns the texts of complete records written since the last call; with
    `final=True` a partial record at a file's end counts as truncated (a server killed mid-write) instead of being
    waited for. `labels` maps classify responses back to probability vectors in the model's label order."""

    def __init__(self, paths: list[str], *, model: str | None = None, labels: list[str] | None = None):
        self.paths, self.model, self.labels = list(paths), model, labels
        self.files: dict[str, _FileState] = {}
        self.counts: Counter = Counter()

    def discover(self) -> list[str]:
        found = set()
        for path in self.paths:
            if os.path.isdir(path):
                found.update(glob.glob(os.path.join(path, "**", "*.tfrecord"), recursive=True))
            elif os.path.isfile(path):
                found.add(path)
            else:  # a glob, or a logging_config filename_prefix
                found.update(glob.glob(path) or glob.glob(f"{path}.*.tfrecord"))
        return sorted(found)

    def poll(self, *, final: bool = False) -> list[LoggedText]:
        rows: list[LoggedText] = []
        for path in self.discover():
            state = self.files.setdefault(path, _FileState())
            if not state.broken:
                rows.extend(self._read_file(path, state, final=final))
        return rows

    def _read_file(self, path: str, state: _FileState, *, final: bool) -> list[LoggedText]:
        rows = []
        with open(path, "rb") as f:
            f.seek(state.offset)
            data = f.read()
        position = 0
        while position < len(data):
            record, used = _frame(data, position)
            if record is None and used == 0:  # incomplete: still being written, or truncated for good
                if final:
                    self.counts["truncated_records"] += 1
                    self.counts["truncated_bytes"] += len(data) - position
                    state.broken = True
                break
            if record is None:
                self.counts["corrupt_records"] += 1
                self.counts["unreadable_bytes"] += len(data) - position
                state.broken = True
                break
            rows.extend(self._parse(record, f"{path}:{state.records}"))
            state.records += 1
            position += used
        state.offset += position
        return rows

    def _parse(self, record: bytes, source: str) -> list[LoggedText]:
        from tensorflow_serving.apis import prediction_log_pb2

        self.counts["records"] += 1
        try:
            entry = prediction_log_pb2.PredictionLog.FromString(record)
        except Exception:  # a record whose checksum holds but is no PredictionLog (another program's TFRecord)
            self.counts["skipped_not_a_prediction_log"] += 1
            return []
        spec = entry.log_metadata.model_spec
        if self.model and spec.name != self.model:
            self.counts["skipped_other_model"] += 1
            return []
        kind = entry.WhichOneof("log_type") or ""
        parse = _PARSERS.get(kind)
        if parse is None:
            self.counts[f"skipped_{kind or 'empty_log'}"] += 1
            return []
        texts, outputs = parse(getattr(entry, kind), self.labels)
        if not texts:
            self.counts["skipped_no_text_input"] += 1
            return []
        self.counts["records_parsed"] += 1
        self.counts["texts"] += len(texts)
        base = dict(time=float(entry.log_metadata.timestamp_secs), model=spec.name, version=spec.version.value,
                    signature=spec.signature_name or "serving_default", kind=kind.removesuffix("_log"),
                    source=source)
        return [LoggedText(text=t, **base, **o) for t, o in zip(texts, outputs)]


def _frame(data: bytes, position: int) -> tuple[bytes | None, int]:
    """(record, bytes used) at `position`; (None, 0) if incomplete, (None, -1) if a checksum fails."""
    if len(data) - position < _HEADER:
        return None, 0
    header = data[position:position + 8]
    (length,) = struct.unpack("<Q", header)
    (length_crc,) = struct.unpack("<I", data[position + 8:position + 12])
    if _masked_crc(header) != length_crc:
        return None, -1
    end = position + _HEADER + length + _FOOTER
    if len(data) < end:
        return None, 0
    record = data[position + _HEADER:end - _FOOTER]
    (data_crc,) = struct.unpack("<I", data[end - _FOOTER:end])
    if _masked_crc(record) != data_crc:
        return None, -1
    return record, end - position


# === PredictionLog kinds ===

def _decode(text: bytes) -> str:
    return text.decode("utf-8", errors="replace")


def _tensor(proto) -> np.ndarray:
    import tensorflow as tf
    return tf.make_ndarray(proto)


def _predict(log, labels) -> tuple[list[str], list[dict]]:
    inputs = log.request.inputs
    from tensorflow.core.framework import types_pb2
    names = [n for n, t in inputs.items() if t.dtype == types_pb2.DT_STRING]
    if not names:
        return [], []
    name = "text" if "text" in names else names[0]
    texts = [_decode(t) for t in _tensor(inputs[name]).reshape(-1)]
    outputs = log.response.outputs
    if "probabilities" in outputs:
        probabilities = _tensor(outputs["probabilities"]).astype(np.float32).reshape(len(texts), -1)
        return texts, [{"probabilities": p} for p in probabilities]
    for key in ("score", "outputs"):
        if key in outputs:
            return texts, [{"score": float(s)} for s in _tensor(outputs[key]).reshape(-1)]
    return texts, [{} for _ in texts]


def _example_texts(request) -> list[str]:
    which = request.input.WhichOneof("kind")
    if which is None:
        return []
    examples = getattr(request.input, which).examples
    context = request.input.example_list_with_context.context if which == "example_list_with_context" else None
    texts = []
    for example in examples:
        feature = example.features.feature.get("text") or (context.features.feature.get("text") if context else None)
        if feature is None or not feature.bytes_list.value:
            return []
        texts.append(_decode(feature.bytes_list.value[0]))
    return texts


def _classify(log, labels) -> tuple[list[str], list[dict]]:
    texts = _example_texts(log.request)
    outputs = []
    for result in log.response.result.classifications:
        scores = {c.label: c.score for c in result.classes}
        order = labels or sorted(scores)
        outputs.append({"probabilities": np.array([scores.get(label, 0.0) for label in order], np.float32)})
    return (texts, outputs) if len(outputs) == len(texts) else (texts, [{} for _ in texts])


def _regress(log, labels) -> tuple[list[str], list[dict]]:
    texts = _example_texts(log.request)
    values = [{"score": r.value} for r in log.response.result.regressions]
    return (texts, values) if len(values) == len(texts) else (texts, [{} for _ in texts])


_PARSERS = {"predict_log": _predict, "classify_log": _classify, "regress_log": _regress}


def files_summary(reader: LogReader) -> list[dict]:
    return [{"file": str(Path(p)), "records": s.records, "bytes_read": s.offset, "stopped_early": s.broken}
            for p, s in sorted(reader.files.items())]
