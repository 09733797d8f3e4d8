"""The data card: a markdown summary of a prepared dataset dir, also written as a TensorBoard text summary."""
from __future__ import annotations

import collections
from pathlib import Path

_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


def length_histogram(records: list[dict]) -> list[tuple[str, int]]:
    """Records per word-count bucket [lo, hi)."""
    counts: collections.Counter = collections.Counter()
    for record in records:
        words = len(record["text"].split())
        lo = max((e for e in _EDGES if e <= words), default=0)
        counts[lo] += 1
    rows = []
    for lo in sorted(counts):
        hi = next((e for e in _EDGES if e > lo), None)
        rows.append((f"{lo}–{hi - 1}" if hi else f"≥{lo}", counts[lo]))
    return rows


def _bar(value: int, largest: int, width: int = 30) -> str:
    return "█" * max(1, round(width * value / largest)) if value else ""


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return lines + [""]


def build_card(*, name: str, manifest: dict, report: dict, records: list[dict], top: int = 10,
               histogram: list | None = None, kept_texts: dict | None = None) -> str:
    # histogram + kept_texts (id → text, at least of each cluster's kept record) stand in for `records` where
    # the records are not in one process (data/beam_pipeline.py).
    kept, dropped, total = report["kept"], report["dropped"], report["input"]
    lines = [f"# Data card: {name}", "",
             f"{total:,} input records → **{kept:,} kept**, {dropped:,} dropped "
             f"({dropped / total:.1%} of the input)." if total else "No input records.", "",
             f"Licence: {manifest.get('license', 'unknown')}", ""]
    lines += ["## Sources", ""]
    lines += _table(("source", "input", "kept", "dropped (fetch / read / clean / dedup)"), [
        (n, c.get("input", 0), c.get("kept", 0),
         " / ".join(str(c.get(f"dropped_{s}", 0)) for s in ("fetch", "read", "clean", "dedup")))
        for n, c in report.get("by_source", {}).items()])
    if report.get("skipped_sources"):
        lines += ["Empty sources skipped: " + ", ".join(report["skipped_sources"]), ""]

    histogram = length_histogram(records) if histogram is None else histogram
    if histogram:
        largest = max(c for _, c in histogram)
        lines += ["## Length (words per record)", ""]
        lines += _table(("words", "records", ""), [(b, c, _bar(c, largest)) for b, c in histogram])

    if report.get("languages"):
        lines += ["## Language mix", "", "(`und`: too short to identify, or not identified confidently)", ""]
        lines += _table(("language", "records", "share"),
                        [(lang, c, f"{c / max(kept, 1):.1%}") for lang, c in list(report["languages"].items())[:top]])

    by_label = manifest.get("counts", {}).get("by_label") or {}
    if by_label:
        lines += ["## Labels", ""]
        lines += _table(("label", "records", "share"), [(l, c, f"{c / max(kept, 1):.1%}") for l, c in by_label.items()])

    reasons = collections.Counter(report.get("dropped_by_reason", {}))
    if reasons:
        examples = {}
        for drop in report.get("dropped_records", []):
            examples.setdefault(drop["reason"], drop)
        lines += ["## Top dropped reasons", ""]
        lines += _table(("reason", "stage", "records", "example"), [
            (r, examples.get(r, {}).get("stage", ""), c, (examples.get(r, {}).get("text") or "")[:80])
            for r, c in reasons.most_common(top)])

    dedup = report.get("dedup")
    if dedup:
        clusters = dedup.get("clusters", [])
        texts = {d["id"]: d.get("text", "") for d in report.get("dropped_records", [])}
        texts.update({r["id"]: r["text"] for r in records} if kept_texts is None else kept_texts)
        lines += ["## Duplicates", "",
                  f"{len(clusters):,} clusters of 2 or more; {sum(len(c) - 1 for c in clusters):,} records dropped; "
                  f"{len(dedup.get('label_conflicts', [])):,} clusters with conflicting labels.", ""]
        largest_clusters = sorted(clusters, key=len, reverse=True)[:5]
        if largest_clusters:
            lines += _table(("size", "kept", "example"),
                            [(len(c), c[0], texts.get(c[0], "")[:80]) for c in largest_clusters])

    if report.get("pii"):
        lines += ["## PII redacted", ""]
        lines += _table(("type", "count"), list(report["pii"].items()))
    return "\n".join(lines).rstrip() + "\n"


def write_card_summary(card: str, logdir: str | Path) -> Path:
    """Writes the card as a TensorBoard text summary (tag `data_card`) with TensorBoard's record writer, which
    (unlike its EventFileWriter) does not import TensorFlow: preparing data stays light."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.text.summary_v2 import text_pb
    from tensorboard.summary.writer.record_writer import RecordWriter

    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / "events.out.tfevents.0.moat-data-card"
    writer = RecordWriter(open(path, "wb"))
    writer.write(event_pb2.Event(wall_time=0.0, file_version="brain.Event:2").SerializeToString())
    writer.write(event_pb2.Event(step=0, wall_time=0.0, summary=text_pb("data_card", card)).SerializeToString())
    writer.close()
    return path
