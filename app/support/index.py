"""The answer index: each knowledge-base entry has one or more keys (its answer, and where allowed its question and
paraphrases); an entry's score for a query is its best key's cosine similarity, optionally mixed with BM25.

Brute force (one matrix product) below `SCANN_MIN_KEYS` keys — exact and about a millisecond for the Python FAQ;
ScaNN (asymmetric hashing + exact re-ranking) from there on, its recall against brute force measured by the bench.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from moatkit.data.core.errors import DataError

SCANN_MIN_KEYS = 100_000
CANDIDATE_KEYS = 100  # keys ScaNN returns per query; their entries are the candidates
INDEX_FILE = "index.npz"
KEY_KINDS = ("answer", "question", "paraphrase")


def scann_pybind():
    """ScaNN's pybind11 searcher. `import scann` also loads its TensorFlow custom op, built against another TF's
    absl and refused by TF 2.21; the pybind searcher needs none of it, so the package __init__ is skipped."""
    import importlib.util
    import sys
    import types

    if "scann" not in sys.modules:
        spec = importlib.util.find_spec("scann")
        if spec is None:
            raise DataError("ScaNN is not installed (needed for an index of 100k keys or more)",
                            fix="pip install 'scann==1.4.2', or set backend=brute")
        package = types.ModuleType("scann")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["scann"] = package
    from scann.scann_ops.py import scann_ops_pybind
    return scann_ops_pybind


def _bm25s():
    import logging

    import bm25s
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each index build at DEBUG
    return bm25s


def bm25_tokens(texts: list[str]):
    bm25s = _bm25s()
    return bm25s.tokenize(texts, stopwords="en", show_progress=False, return_ids=False)


class AnswerIndex:
    def __init__(self, embeddings: np.ndarray, owners: np.ndarray, kinds: list[str], *, answers: list[str],
                 hybrid_weight: float = 0.0, backend: str = "auto"):
        order = np.argsort(owners, kind="stable")  # keys grouped by entry, so a max per entry is one reduceat
        self.embeddings = np.ascontiguousarray(embeddings[order], dtype=np.float32)  # (keys, dim)
        self.owners = owners[order].astype(np.int64)
        self.kinds = [kinds[i] for i in order]
        self.entries = len(answers)
        if set(self.owners.tolist()) != set(range(self.entries)):
            raise DataError("every knowledge-base entry needs at least one key in the index", fix="rebuild the index")
        self.starts = np.flatnonzero(np.r_[True, self.owners[1:] != self.owners[:-1]])
        self.hybrid_weight = float(hybrid_weight)
        self._bm25 = None
        self._answers = answers
        self.backend = ("scann" if len(self.owners) >= SCANN_MIN_KEYS else "brute") if backend == "auto" else backend
        self._scann = self._build_scann() if self.backend == "scann" else None

    def _build_scann(self):
        leaves = int(np.sqrt(len(self.embeddings)))
        return (scann_pybind().builder(self.embeddings, CANDIDATE_KEYS, "dot_product")
                .tree(num_leaves=leaves, num_leaves_to_search=max(leaves // 10, 10), training_sample_size=min(
                    len(self.embeddings), 250_000))
                .score_ah(2, anisotropic_quantization_threshold=0.2).reorder(400).build())

    def bm25_scores(self, queries: list[str]) -> np.ndarray:
        """(queries, entries) BM25 over the answers, each row divided by its maximum (0 when nothing matches)."""
        if self._bm25 is None:
            bm25s = _bm25s()
            self._bm25 = bm25s.BM25()
            self._bm25.index(bm25s.tokenize(self._answers, stopwords="en", show_progress=False), show_progress=False)
        rows = np.stack([self._bm25.get_scores(tokens) if tokens else np.zeros(self.entries)
                         for tokens in bm25_tokens(queries)])
        return rows / np.maximum(rows.max(axis=1, keepdims=True), 1e-9)

    def cosine_scores(self, queries: np.ndarray) -> np.ndarray:
        """(queries, entries): each entry's best key, exact."""
        return np.maximum.reduceat(queries @ self.embeddings.T, self.starts, axis=1)

    def search(self, queries: np.ndarray, texts: list[str] | None = None, *, k: int = 3):
        """(top entry indices, their scores, their cosine similarities): each (queries, k), best first. With texts
        and a hybrid weight the score adds BM25; ScaNN scores only the entries of a query's best keys."""
        bm25 = self.bm25_scores(texts) if self.hybrid_weight and texts is not None else None
        if self._scann is not None:
            return self._search_candidates(queries, bm25, k)
        cosine = self.cosine_scores(queries)
        scores = cosine + self.hybrid_weight * bm25 if bm25 is not None else cosine
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return top, np.take_along_axis(scores, top, 1), np.take_along_axis(cosine, top, 1)

    def _search_candidates(self, queries: np.ndarray, bm25: np.ndarray | None, k: int):
        neighbours, distances = self._scann.search_batched(queries, final_num_neighbors=CANDIDATE_KEYS)
        top = np.zeros((len(queries), k), dtype=np.int64)
        scores, cosine = np.full((len(queries), k), -np.inf), np.full((len(queries), k), -np.inf)
        for row, (keys, values) in enumerate(zip(neighbours, distances)):
            # keys come best first, so an entry's first key is its best
            entries, first = np.unique(self.owners[keys], return_index=True)
            best = values[first]
            mixed = best + self.hybrid_weight * bm25[row, entries] if bm25 is not None else best
            order = np.argsort(-mixed, kind="stable")[:k]
            top[row, :len(order)], scores[row, :len(order)], cosine[row, :len(order)] = (
                entries[order], mixed[order], best[order])
        return top, scores, cosine

    def save(self, out_dir: Path) -> None:
        tmp = out_dir / f".{INDEX_FILE}.tmp.npz"
        np.savez(tmp, embeddings=self.embeddings, owners=self.owners, kinds=np.array(self.kinds),
                 meta=np.array(json.dumps({"hybrid_weight": self.hybrid_weight, "backend": self.backend})))
        os.replace(tmp, out_dir / INDEX_FILE)

    @classmethod
    def load(cls, out_dir: Path, answers: list[str]) -> "AnswerIndex":
        path = Path(out_dir) / INDEX_FILE
        if not path.is_file():
            raise DataError(f"no {INDEX_FILE} in '{out_dir}'", fix="run `moat support build` first")
        with np.load(path) as saved:
            meta = json.loads(str(saved["meta"]))
            return cls(saved["embeddings"], saved["owners"], saved["kinds"].tolist(), answers=answers,
                       hybrid_weight=meta["hybrid_weight"], backend=meta["backend"])


def index_keys(entries, *, allowed_questions: set[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """(texts, owners, kinds) of the keys: every answer and paraphrase, and the questions (all, or only of the ids
    in allowed_questions: a held-out question must not be its own key)."""
    texts, owners, kinds = [], [], []
    for n, entry in enumerate(entries):
        keys = [("answer", entry.answer), *(("paraphrase", p) for p in entry.paraphrases)]
        if allowed_questions is None or entry.id in allowed_questions:
            keys.append(("question", entry.question))
        for kind, text in keys:
            texts.append(text)
            owners.append(n)
            kinds.append(kind)
    return texts, owners, kinds


def build_index(entries, vectors: dict[str, np.ndarray], *, allowed_questions: set[str] | None = None,
                answers_only: bool = False, hybrid_weight: float = 0.0) -> AnswerIndex:
    """The index of `entries` from precomputed embeddings (text → vector): every key, the answers only, or the
    answers and paraphrases plus the questions of `allowed_questions`."""
    texts, owners, kinds = index_keys(entries, allowed_questions=set() if answers_only else allowed_questions)
    keep = [n for n, kind in enumerate(kinds) if not (answers_only and kind != "answer")]
    return AnswerIndex(np.stack([vectors[texts[n]] for n in keep]), np.asarray([owners[n] for n in keep]),
                       [kinds[n] for n in keep], answers=[e.answer for e in entries], hybrid_weight=hybrid_weight)
