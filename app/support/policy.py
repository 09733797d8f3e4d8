"""Answer, clarify or hand off: a calibrated P(in scope) from the retrieval scores and the router's confidence.

Features per query: the best entry's score s1, the margin s1 − s2 to the runner-up, and (with a router) its top
probability. A logistic regression fitted on dev in-scope questions against dev out-of-scope texts gives
P(in scope); below `handoff_below` (the threshold that still answers `in_scope_recall` of dev in-scope questions)
the turn goes to a person. Above it, a margin under `clarify_below` means the top answers are too close: the
assistant shows the candidates instead (the smallest margin whose direct answers on dev are right
`answer_precision` of the time).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

POLICY_FILE = "policy.json"


def features(scores: np.ndarray, router_pmax: np.ndarray | None) -> np.ndarray:
    """scores: (n, k ≥ 2) best first → (n, 2 or 3)."""
    columns = [scores[:, 0], scores[:, 0] - scores[:, 1]]
    if router_pmax is not None:
        columns.append(router_pmax)
    return np.stack(columns, axis=1).astype(np.float64)


@dataclasses.dataclass
class Policy:
    weights: list[float]
    bias: float
    handoff_below: float  # P(in scope) under this → hand off
    clarify_below: float  # margin s1 − s2 under this → clarify
    curves: dict = dataclasses.field(default_factory=dict)  # the dev trade-offs the thresholds were read from

    def in_scope(self, feats: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(feats @ np.asarray(self.weights) + self.bias)))

    def decide(self, feats: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(action per query: answer | clarify | handoff, P(in scope))."""
        p = self.in_scope(feats)
        actions = np.where(p < self.handoff_below, "handoff", np.where(feats[:, 1] < self.clarify_below,
                                                                         "clarify", "answer"))
        return actions.tolist(), p

    def save(self, out_dir: Path) -> None:
        (Path(out_dir) / POLICY_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, out_dir: Path) -> "Policy":
        return cls(**json.loads((Path(out_dir) / POLICY_FILE).read_text()))


def fit_policy(in_feats: np.ndarray, in_correct: np.ndarray, out_feats: np.ndarray, *, in_scope_recall: float,
               answer_precision: float, max_clarify_share: float = 1.0, margins: tuple[np.ndarray, np.ndarray] | None = None) -> Policy:
    """in_feats/out_feats: dev in-scope and out-of-scope features; in_correct: whether each in-scope query's top
    entry is its own. `margins`: (margin, correct) of more in-scope questions for the clarify margin, which needs
    no router and no out-of-scope texts (default: the answered dev questions)."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([in_feats, out_feats])
    y = np.r_[np.ones(len(in_feats)), np.zeros(len(out_feats))]
    # balanced: the dev sets' sizes are arbitrary, so the prior should not be theirs
    model = LogisticRegression(C=10.0, class_weight="balanced", max_iter=1000).fit(x, y)
    policy = Policy(weights=model.coef_[0].tolist(), bias=float(model.intercept_[0]), handoff_below=0.0,
                    clarify_below=0.0)
    p_in, p_out = policy.in_scope(in_feats), policy.in_scope(out_feats)
    policy.handoff_below = float(np.quantile(p_in, 1.0 - in_scope_recall, method="lower"))
    answered = p_in >= policy.handoff_below
    margin, correct = margins if margins is not None else (in_feats[answered, 1], in_correct[answered])
    policy.clarify_below, margin_curve = _clarify_margin(margin, correct, answer_precision, max_clarify_share)
    policy.curves = {"handoff": handoff_curve(p_in, p_out), "clarify": margin_curve}
    return policy


def _clarify_margin(margins: np.ndarray, correct: np.ndarray, target: float,
                    max_share: float) -> tuple[float, list[dict]]:
    """The smallest margin whose direct answers (margin ≥ it) are right `target` of the time, but never one that
    sends more than `max_share` of the questions to clarify: where closeness does not predict a wrong answer (a
    knowledge base with near-duplicate questions), a precision target alone would clarify almost everything."""
    candidates = np.unique(np.r_[0.0, margins])
    curve, chosen = [], None
    for m in candidates:
        direct = margins >= m
        precision = float(correct[direct].mean()) if direct.any() else 1.0
        curve.append({"margin": round(float(m), 4), "direct_share": round(float(direct.mean()), 4),
                      "precision": round(precision, 4)})
        if chosen is None and precision >= target:
            chosen = float(m)
    cap = float(np.quantile(margins, max_share, method="lower")) if max_share < 1 else np.inf
    chosen = min(chosen if chosen is not None else float(candidates[-1]) + 1e-6, cap)
    return chosen, curve[:: max(1, len(curve) // 25)]


def handoff_curve(p_in: np.ndarray, p_out: np.ndarray, points: int = 21) -> list[dict]:
    """In-scope recall (answered share of in-scope) and false-accept rate (answered share of out-of-scope)."""
    return [{"threshold": round(float(t), 4), "in_scope_recall": round(float((p_in >= t).mean()), 4),
             "false_accept": round(float((p_out >= t).mean()), 4)}
            for t in np.quantile(np.r_[p_in, p_out], np.linspace(0, 1, points))]


def auroc(p_in: np.ndarray, p_out: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(p_in)), np.zeros(len(p_out))], np.r_[p_in, p_out]))


def false_accept_at_recall(p_in: np.ndarray, p_out: np.ndarray, recall: float) -> float:
    threshold = np.quantile(p_in, 1.0 - recall, method="lower")
    return float((p_out >= threshold).mean())
