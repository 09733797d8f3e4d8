"""Full-ranking evaluation of next-item scores: every item of the catalogue is a candidate (no sampled negatives),
items already in the user's history are excluded, ties are broken at random (a constant scorer gets chance, not
the best rank)."""
from __future__ import annotations

import numpy as np

CUTOFFS = (10, 20)


def ranks(scores: np.ndarray, histories: list[np.ndarray], targets: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """scores (U, N + 1) over padding + items → the 0-based rank of each user's target among the items they have
    not seen (index 0 and seen items excluded)."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    scores[:, 0] = -np.inf
    for row, history in enumerate(histories):
        seen = history[history != targets[row]]  # a re-consumed target stays a candidate
        scores[row, seen] = -np.inf
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    greater = (scores > target_scores).sum(axis=1)
    ties = (scores == target_scores).sum(axis=1) - 1
    rng = np.random.default_rng(seed)
    return greater + np.floor(rng.random(len(targets)) * (ties + 1)).astype(int)


def ranking_metrics(rank: np.ndarray, cutoffs=CUTOFFS) -> dict:
    """HR@k and NDCG@k (one relevant item: 1 / log2(rank + 2) when rank < k), means over users."""
    out = {}
    for k in cutoffs:
        hit = rank < k
        out[f"hr@{k}"] = round(float(hit.mean()), 4)
        out[f"ndcg@{k}"] = round(float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean()), 4)
    out["mrr"] = round(float((1.0 / (rank + 1.0)).mean()), 4)
    return out


def evaluate_scores(scores: np.ndarray, histories: list[np.ndarray], targets: np.ndarray, *, seed: int = 0) -> dict:
    return {**ranking_metrics(ranks(scores, histories, targets, seed=seed)), "users": int(len(targets))}
