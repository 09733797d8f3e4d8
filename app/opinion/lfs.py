"""Labelling functions for financial sentiment (negative / neutral / positive), for data/labeling/weak.py.

Three kinds of evidence, each its own LFs so the label model can weigh them:
- the Loughran–McDonald lists (catalog:lm-lexicon): more negative than positive finance words → negative, and
  the reverse; a sentence with neither and no movement → neutral. A negator ("not", "no", "without") just
  before a word flips it.
- movement patterns: a financial quantity with a verb of rising or falling ("shares fell 5%", "profits jumped").
- the general sentiment model (MR), only where it is confident, and neutral where it cannot choose.
"""
from __future__ import annotations

import re

from moatkit.data.labeling.weak import ABSTAIN, LabelingFunction

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_NEGATORS = frozenset({"not", "no", "never", "without", "nor", "neither", "n't", "cannot"})
_QUANTITY = (r"(?:profits?|earnings|sales|revenues?|turnover|income|shares?|stocks?|prices?|markets?|index|output|"
             r"exports?|demand|growth|margins?|dividends?|orders|bookings|value|economy|gdp|spending|jobs)")
_UP = r"(?:rose|rise[sn]?|rising|jump(?:ed|s)?|climb(?:ed|s)?|soar(?:ed|s)?|gain(?:ed|s)?|increas(?:ed|es)|" \
      r"surg(?:ed|es)|rall(?:ied|ies)|boost(?:ed)?|grew|grow(?:s|ing)?|up\s+\d|doubled|beat|improv(?:ed|es))"
_DOWN = r"(?:fell|fall(?:s|en|ing)?|drop(?:ped|s)?|declin(?:ed|es)|slump(?:ed|s)?|plung(?:ed|es)|tumbl(?:ed|es)|" \
        r"slid|slip(?:ped|s)?|los[te]s?|sank|shrank|shrink(?:s|ing)?|down\s+\d|halved|cut|weak(?:er|ened))"
_MOVE_UP = re.compile(rf"\b{_QUANTITY}\b(?:\W+\w+){{0,4}}?\W+{_UP}\b", re.IGNORECASE)
_MOVE_DOWN = re.compile(rf"\b{_QUANTITY}\b(?:\W+\w+){{0,4}}?\W+{_DOWN}\b", re.IGNORECASE)


def lexicon_counts(text: str, negative: frozenset, positive: frozenset) -> tuple[int, int]:
    """(negative, positive) finance words, a word right after a negator counted on the other side."""
    words = _WORD.findall(text.lower().replace("n't", " n't"))
    neg = pos = 0
    for i, word in enumerate(words):
        flipped = i > 0 and words[i - 1] in _NEGATORS
        if word in negative:
            pos, neg = (pos + 1, neg) if flipped else (pos, neg + 1)
        elif word in positive:
            pos, neg = (pos, neg + 1) if flipped else (pos + 1, neg)
    return neg, pos


def finance_lfs(lexicon: list[dict], general: dict[str, tuple[float, float]] | None = None, *,
                confident: float = 0.9, undecided: float = 0.2) -> list[LabelingFunction]:
    """The LFs over a lexicon (records of catalog:lm-lexicon) and, when given, the general model's
    (p_negative, p_positive) per text."""
    negative = frozenset(r["text"] for r in lexicon if "negative" in r["meta"]["categories"])
    positive = frozenset(r["text"] for r in lexicon if "positive" in r["meta"]["categories"])

    def lm_polarity(text):
        neg, pos = lexicon_counts(text, negative, positive)
        return "negative" if neg > pos else "positive" if pos > neg else ABSTAIN

    def lm_neutral(text):
        neg, pos = lexicon_counts(text, negative, positive)
        moved = _MOVE_UP.search(text) or _MOVE_DOWN.search(text)
        return "neutral" if neg == pos == 0 and not moved else ABSTAIN

    def movement(text):
        up, down = bool(_MOVE_UP.search(text)), bool(_MOVE_DOWN.search(text))
        return "positive" if up and not down else "negative" if down and not up else ABSTAIN

    lfs = [LabelingFunction("lm_polarity", lm_polarity), LabelingFunction("lm_neutral", lm_neutral),
           LabelingFunction("movement", movement)]
    if general is not None:
        def general_confident(text):
            p_neg, p_pos = general.get(text, (0.5, 0.5))
            return "negative" if p_neg >= confident else "positive" if p_pos >= confident else ABSTAIN

        def general_undecided(text):
            p_neg, p_pos = general.get(text, (1.0, 0.0))
            return "neutral" if abs(p_neg - p_pos) < undecided else ABSTAIN

        lfs += [LabelingFunction("general_confident", general_confident),
                LabelingFunction("general_undecided", general_undecided)]
    return lfs
