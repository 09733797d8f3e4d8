"""One chat turn: embed (+ route) the message, search the index, let the policy decide. No HTTP here: the
service (service.py), the evaluation and the notebook all call `Assistant.reply`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from moatkit.app.support.index import AnswerIndex
from moatkit.app.support.kb import Entry, read_saved_knowledge_base
from moatkit.app.support.policy import Policy, features
from moatkit.data.core.errors import DataError

SUPPORT_FILE = "support.json"  # what a build serves: model names + versions, router labels, top_k


def read_support_file(out_dir: Path) -> dict:
    path = Path(out_dir) / SUPPORT_FILE
    if not path.is_file():
        raise DataError(f"'{out_dir}' has no {SUPPORT_FILE}", fix="run `moat support build` first (its `out` dir)")
    return json.loads(path.read_text())


def entry_view(entry: Entry, score: float | None = None) -> dict:
    view = {"entry_id": entry.id, "question": entry.question, "answer": entry.answer,
            "department": entry.department, "source": entry.source}
    return view if score is None else {**view, "score": round(float(score), 4)}


class Assistant:
    def __init__(self, *, entries: list[Entry], index: AnswerIndex, policy: Policy, models,
                 labels: list[str] | None = None, top_k: int = 3):
        self.entries, self.index, self.policy, self.models = entries, index, policy, models
        self.labels, self.top_k = labels, top_k

    @classmethod
    def from_build(cls, out_dir: str | Path, models) -> "Assistant":
        out_dir = Path(out_dir)
        built = read_support_file(out_dir)
        kb = read_saved_knowledge_base(out_dir)
        index = AnswerIndex.load(out_dir, [e.answer for e in kb.entries])
        return cls(entries=kb.entries, index=index, policy=Policy.load(out_dir), models=models,
                   labels=built.get("labels"), top_k=built["top_k"])

    def reply(self, message: str) -> dict:
        started = time.perf_counter()
        embeddings, probabilities = self.models.both([message])
        modelled = time.perf_counter()
        top, scores, _ = self.index.search(embeddings, [message], k=max(self.top_k, 2))
        pmax = probabilities.max(axis=1) if probabilities is not None else None
        actions, p_in = self.policy.decide(features(scores, pmax))
        action, best = actions[0], self.entries[int(top[0, 0])]
        # an answer's department is its entry's (measured more often right than the router's); a hand-off goes to
        # the router's pick, trained on every department's text, when there is a router
        routed = probabilities is not None and self.labels and action == "handoff"
        department = self.labels[int(probabilities[0].argmax())] if routed else best.department
        reply = {"action": action, "confidence": round(float(p_in[0]), 4), "department": department,
                 "answer": entry_view(best, scores[0, 0]) if action == "answer" else None,
                 "candidates": ([entry_view(self.entries[int(i)], s) for i, s in zip(top[0], scores[0])][:self.top_k]
                                if action == "clarify" else [])}
        reply["timings_ms"] = {"models": round((modelled - started) * 1e3, 2),
                               "total": round((time.perf_counter() - started) * 1e3, 2)}
        return reply


def ranks_of(top: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """1-based rank of each gold entry in its row of top, 0 when missing."""
    hits = top == gold[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
