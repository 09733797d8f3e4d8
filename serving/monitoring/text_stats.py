"""Input statistics of raw texts, each turned into a histogram over bins fixed by the reference profile: length in
words, share of words outside the reference vocabulary (OOV), language (py3langid, which ships langid.py's model), and
empty/garbage texts. Histograms of two samples are what the chi-square drift tests compare (detectors.py)."""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
OOV_EDGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)  # left edges; the last bin is [0.5, 1]
MIN_LANGUAGE_SHARE = 0.02  # rarer reference languages are merged into "other" (chi-square needs expected counts)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_garbage(text: str) -> bool:
    """Empty, or under half letters among the non-space characters (markup, ids, binary junk)."""
    visible = [c for c in text if not c.isspace()]
    return not visible or sum(c.isalpha() for c in visible) < 0.5 * len(visible)


@lru_cache(maxsize=1)
def _identifier():
    # py3langid: langid.py's model (shipped in the wheel) with a vectorised classifier, 30× faster here (0.45 vs
    # 13.7 ms a sentence, same answer on 297 of 300 MR sentences); language id runs on every logged text.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier
    return LanguageIdentifier.from_model_file(MODEL_FILE)


def language(text: str) -> str:
    return _identifier().classify(text)[0] if words(text) else "none"


def length_edges(lengths: list[int], bins: int = 10) -> list[float]:
    """Left edges of about `bins` quantile bins of the reference lengths (ties merged)."""
    quantiles = np.quantile(np.asarray(lengths, float), np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({0.0, *map(float, np.floor(quantiles))})


def language_categories(languages: list[str]) -> list[str]:
    values, counts = np.unique(languages, return_counts=True)
    keep = [v for v, c in zip(values, counts) if c >= MIN_LANGUAGE_SHARE * len(languages)]
    return sorted(str(v) for v in keep) + ["other"]


class TextFeatures:
    """Per-text features and their histograms, with bins from a profile's `inputs` section."""

    def __init__(self, *, vocabulary: set[str], length_edges: list[float], languages: list[str]):
        self.vocabulary, self.length_edges, self.languages = vocabulary, length_edges, languages

    def features(self, texts: list[str]) -> dict[str, np.ndarray]:
        tokens = [words(t) for t in texts]
        oov = [sum(w not in self.vocabulary for w in ws) / len(ws) if ws else 0.0 for ws in tokens]
        known = {lang: i for i, lang in enumerate(self.languages)}
        other = len(self.languages) - 1
        return {
            "length": np.array([len(ws) for ws in tokens], np.int64),
            "oov": np.array(oov, np.float64),
            "language": np.array([known.get(_identifier().classify(t)[0] if ws else "none", other)
                                  for t, ws in zip(texts, tokens)], np.int64),
            "garbage": np.array([is_garbage(t) for t in texts], np.int64),
        }

    def histograms(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        def binned(values, edges):
            return np.bincount(np.searchsorted(edges, values, side="right") - 1, minlength=len(edges))
        return {
            "length": binned(features["length"], self.length_edges),
            "oov": binned(features["oov"], OOV_EDGES),
            "language": np.bincount(features["language"], minlength=len(self.languages)),
            "garbage": np.bincount(features["garbage"], minlength=2),
        }

    def bin_names(self) -> dict[str, list[str]]:
        def ranges(edges, fmt):
            return [f"{fmt(a)}–{fmt(b)}" for a, b in zip(edges, edges[1:])] + [f"≥{fmt(edges[-1])}"]
        return {"length": ranges(self.length_edges, lambda v: f"{v:g}"),
                "oov": ranges(OOV_EDGES, lambda v: f"{v:.0%}"),
                "language": list(self.languages), "garbage": ["text", "empty/garbage"]}
