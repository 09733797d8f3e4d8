"""The baselines users compare a sequential recommender against, scored like it (scores over padding + items).

- most-popular: training interaction counts.
- item-kNN: cosine similarity of item co-occurrence across users (Sarwar et al. 2001), a history scored by the
  sum of its items' similarity rows over the `neighbours` most similar items of each.
- ALS: implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) by the `implicit` library; a history's
  user vector is solved from its items (`recalculate_user`), so validation and test histories need no refit.
Each is tuned on the validation targets over a small grid (`tune`), then reported on the test targets.
"""
from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp

from moatkit.models.recommend.evaluate import evaluate_scores


def user_item_matrix(histories: list[np.ndarray], num_items: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int32)
    matrix = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(histories), num_items + 1))
    matrix.sum_duplicates()
    return matrix


class MostPopular:
    name = "most-popular"

    def fit(self, train: list[np.ndarray], num_items: int) -> "MostPopular":
        self.counts = np.bincount(np.concatenate(train), minlength=num_items + 1).astype(np.float32)
        return self

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


class ItemKNN:
    name = "item-knn"

    def __init__(self, *, neighbours: int = 100, shrink: float = 10.0):
        self.neighbours, self.shrink = neighbours, shrink

    def fit(self, train: list[np.ndarray], num_items: int) -> "ItemKNN":
        binary = (user_item_matrix(train, num_items) > 0).astype(np.float32)
        co = (binary.T @ binary).toarray()  # (N + 1, N + 1) co-occurrence counts
        norms = np.sqrt(np.diag(co))
        similarity = co / (np.outer(norms, norms) + self.shrink + 1e-9)
        np.fill_diagonal(similarity, 0.0)
        if self.neighbours < similarity.shape[1]:  # keep each item's most similar neighbours only
            cut = np.partition(similarity, -self.neighbours, axis=1)[:, -self.neighbours][:, None]
            similarity = np.where(similarity >= cut, similarity, 0.0)
        self.similarity = similarity.astype(np.float32)
        return self

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        num_items = self.similarity.shape[0] - 1
        return np.asarray(user_item_matrix(histories, num_items) @ self.similarity)


class ALS:
    name = "als-mf"

    def __init__(self, *, factors: int = 64, regularization: float = 0.05, alpha: float = 1.0, iterations: int = 15,
                 seed: int = 0):
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.seed = iterations, seed

    def fit(self, train: list[np.ndarray], num_items: int) -> "ALS":
        from implicit.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        self.num_items = num_items
        self.model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization,
                                             alpha=self.alpha, iterations=self.iterations, random_state=self.seed)
        with threadpool_limits(1, "blas"):  # implicit's own threads; a BLAS pool inside each one only contends
            self.model.fit(user_item_matrix(train, num_items), show_progress=False)
        return self

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        items = user_item_matrix(histories, self.num_items)
        with threadpool_limits(1, "blas"):
            users = self.model.recalculate_user(np.arange(len(histories)), items)
        return np.asarray(users) @ np.asarray(self.model.item_factors).T


GRIDS = {
    MostPopular: [{}],
    ItemKNN: [{"neighbours": n, "shrink": s} for n, s in itertools.product((20, 100, 400, 1000), (0.0, 10.0, 100.0))],
    ALS: [{"factors": f, "regularization": r, "alpha": a}
          for f, r, a in itertools.product((16, 32, 64, 128), (0.001, 0.01, 0.1), (0.3, 1.0, 3.0))],
}


def tune(cls, train: list[np.ndarray], num_items: int, valid_histories: list[np.ndarray],
         valid_targets: np.ndarray, *, seed: int = 0):
    """Fits `cls` for every setting of its grid and returns (the best on validation NDCG@10, its settings, metrics)."""
    best = None
    for settings in GRIDS[cls]:
        extra = {"seed": seed} if cls is ALS else {}
        model = cls(**settings, **extra).fit(train, num_items)
        metrics = evaluate_scores(model.scores(valid_histories), valid_histories, valid_targets, seed=seed)
        if best is None or metrics["ndcg@10"] > best[2]["ndcg@10"]:
            best = (model, settings, metrics)
    return best
