"""Parsers for the raw files carried by registry packages. Each returns (kept records, dropped records)."""
from __future__ import annotations

import csv
import io
import math


def parse_mr(raw: bytes) -> tuple[list[dict], list[dict]]:
    """Hutto & Gilbert's movie-review snippets: TSV `id, sentiment, text`, sentiment = mean rating in −4..+4.

    Polarity is the sign of the mean rating; a mean of exactly 0 has no polarity and is dropped (reported).
    """
    kept, dropped = [], []
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header[:3]] != ["id", "sentiment", "text"]:
        raise ValueError(f"expected a header 'id<TAB>sentiment<TAB>text', got {header!r}")
    for line_no, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 3:
            dropped.append({"id": f"line{line_no}", "reason": "malformed row (fewer than 3 columns)"})
            continue
        rid, score_text, sentence = row[0].strip(), row[1].strip(), "\t".join(row[2:]).strip()
        try:
            score = float(score_text)
            if not math.isfinite(score):
                raise ValueError
        except ValueError:
            dropped.append({"id": rid, "reason": f"score is not a number: {score_text!r}"})
            continue
        if not sentence:
            dropped.append({"id": rid, "reason": "empty text"})
        elif score == 0:
            dropped.append({"id": rid, "reason": "score 0 has no polarity", "text": sentence})
        else:
            kept.append({"id": f"mr-{rid}", "text": sentence, "label": "positive" if score > 0 else "negative",
                         "score": score, "source": "mr"})
    return kept, dropped


def parse_trec(raw: bytes) -> tuple[list[dict], list[dict]]:
    """TREC question classification: lines `COARSE:fine question text`; train and test are concatenated in the
    carrier file, so exact repeats are dropped (reported) and the first occurrence kept."""
    kept, dropped, seen = [], [], {}
    for line_no, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        label, _, question = line.partition(" ")
        coarse, sep, fine = label.partition(":")
        if not sep or not question.strip() or not coarse.isupper():
            dropped.append({"id": f"line{line_no}", "reason": "malformed line (expected 'COARSE:fine text')"})
            continue
        question = question.strip()
        if question in seen:
            first = seen[question]
            reason = "duplicate" if first["meta"]["fine"] == label else "duplicate with a conflicting label"
            dropped.append({"id": f"line{line_no}", "reason": reason, "kept_id": first["id"]})
            continue
        record = {"id": f"trec-{len(kept)}", "text": question, "label": coarse, "meta": {"fine": f"{coarse}:{fine}"},
                  "source": "trec"}
        seen[question] = record
        kept.append(record)
    return kept, dropped
