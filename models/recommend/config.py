"""The `moat recommend train` config."""
from __future__ import annotations

import dataclasses
from typing import Literal

from moatkit.data.core.errors import ConfigError
from moatkit.models.distribute import Precision, StrategyName


@dataclasses.dataclass
class RecommendConfig:
    data: str = "catalog:movielens-100k"  # catalog:NAME, a dataset dir of interactions, or a user,item,timestamp CSV
    run_dir: str = "runs/recommend"
    arch: Literal["sasrec", "bert4rec"] = "sasrec"  # causal next-item (SASRec) or masked-item (BERT4Rec)
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    max_length: int = 200  # the most recent items a model reads; older ones are dropped (truncate oldest)
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_dim: int = 256
    dropout: float = 0.2
    mask_probability: float = 0.2  # bert4rec: share of training positions replaced by the mask item
    epochs: int = 100  # ≈ 11 min on 2 cores at the defaults; validation NDCG@10 still creeps up to ≈ 200
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    eval_every: int = 5  # epochs between validation rankings (each one logs HR/NDCG to TensorBoard)
    patience: int = 4  # validation rankings without a better NDCG@10 before stopping
    seed: int = 0
    baselines: bool = True  # most-popular, item-kNN and ALS matrix factorisation in the same evaluation
    precision: Precision = "float32"
    strategy: StrategyName = "auto"
    logical_cpus: int = 0  # >1: split the CPU into that many devices (MirroredStrategy without GPUs)
    resume: bool = True
    # export of the trained model into a TF Serving model repository (<repo>/<model_name>/<version>/)
    export: bool = True
    repo: str = "artifacts/models"
    model_name: str = "recommender"
    top_k: int = 10  # what serving_default returns; the `top_k` signature takes k per request

    def validate(self) -> None:
        if self.arch not in ("sasrec", "bert4rec"):
            raise ConfigError(f"arch '{self.arch}' is not a recommender architecture", fix="use sasrec or bert4rec")
        if self.dim % self.num_heads:
            raise ConfigError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}",
                              fix="pick num_heads dividing dim")
        for name in ("max_length", "dim", "num_layers", "num_heads", "epochs", "batch_size", "eval_every", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})", fix=f"--set {name}=…")
        if not 0 < self.mask_probability < 1:
            raise ConfigError(f"mask_probability {self.mask_probability} must lie in (0, 1)",
                              fix="--set mask_probability=0.2")
