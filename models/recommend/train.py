"""`moat recommend train`: fit a sequential recommender on leave-one-out splits, select on validation NDCG@10,
rank the test targets over the full catalogue beside tuned baselines, save the model and export it for serving.

Each Keras epoch is `eval_every` passes over the training windows followed by one validation ranking (TensorBoard
scalars in `<run_dir>/{train,eval}/`), so early stopping and epoch checkpoints (resume after a kill) work at that
grain. Mixed precision and any distribution strategy come from models/distribute like fine-tuning's.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from moatkit.data.interactions import Interactions, LeaveOneOut, leave_one_out, read_interactions
from moatkit.models.distribute import pick_strategy, set_precision, split_cpu
from moatkit.models.recommend import baselines as baselines_lib
from moatkit.models.recommend.config import RecommendConfig
from moatkit.models.recommend.evaluate import evaluate_scores
from moatkit.models.recommend.inputs import causal_dataset, inference_inputs, masked_dataset, windows
from moatkit.models.recommend.model import SequentialRecommender, save_model
from moatkit.models.training import EpochCheckpoint, EvalAndLog, adamw, config_fingerprint, resume_state

_NOT_FINGERPRINTED = ("resume", "export", "repo", "model_name", "top_k", "baselines")
SCALARS = ("hr_10", "ndcg_10", "hr_20", "ndcg_20")


def load_interactions(config: RecommendConfig) -> Interactions:
    path = config.data
    if path.startswith("catalog:"):
        from moatkit.data.fetch import fetch
        path = str(fetch(path.split(":", 1)[1], kind="dataset"))
    return read_interactions(path, min_user_interactions=config.min_user_interactions,
                             min_item_interactions=config.min_item_interactions)


def predict_scores(model: SequentialRecommender, histories: list[np.ndarray], *, batch_size: int = 256) -> np.ndarray:
    """(U, N + 1) next-item logits for each history."""
    inputs = inference_inputs(histories, model.max_length, mask_id=None if model.causal else model.mask_id)
    step = model.__dict__.get("_next_item_step")
    if step is None:  # traced once per model, not once per call
        step = model.__dict__["_next_item_step"] = tf.function(model.next_item_logits, reduce_retracing=True)
    return np.concatenate([step(tf.constant(inputs[i:i + batch_size])).numpy()
                           for i in range(0, len(inputs), batch_size)]) if len(inputs) else np.zeros((0, 0))


def train_recommender(config: RecommendConfig, *, verbose: int = 1) -> dict:
    """Trains, evaluates and (config.export) exports; returns the report also written to `<run_dir>/report.json`.
    The global precision policy is restored afterwards."""
    previous_policy = tf.keras.mixed_precision.global_policy().name
    try:
        report = _train_recommender(config, verbose=verbose)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)
    if config.export:  # in the restored (float32) policy: the served graph carries no mixed-precision casts
        from moatkit.models.recommend.export import export_recommender
        report["export"] = export_recommender(report["model_dir"], repo=config.repo, model_name=config.model_name,
                                              top_k=config.top_k)
    (Path(config.run_dir) / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _train_recommender(config: RecommendConfig, *, verbose: int) -> dict:
    started = time.time()
    config.validate()
    split_cpu(config.logical_cpus)
    config = dataclasses.replace(config, precision=set_precision(config.precision))
    tf.keras.utils.set_random_seed(config.seed)
    data = load_interactions(config)
    split = leave_one_out(data)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    strategy = pick_strategy(config.strategy)
    model = _build_model(config, data.num_items, strategy)
    valid_histories = split.history("valid")
    logger = EvalAndLog(run_dir=run_dir, every=10, patience=config.patience, classification=False, scalars=SCALARS,
                        evaluate=lambda: _validation(model, valid_histories, split.valid, config.seed))
    trained_windows = len(windows(split.train, config.max_length))
    first_epoch, train_seconds, passes = _fit(config, model=model, split=split, logger=logger, verbose=verbose,
                                              batches_per_pass=max(1, -(-trained_windows // config.batch_size)))
    model.set_weights(logger.best_weights)

    test_histories = split.history("test")
    results = {"ours": evaluate_scores(predict_scores(model, test_histories), test_histories, split.test,
                                       seed=config.seed)}
    tuned = _baselines(config, data, split) if config.baselines else {}
    results.update({name: entry["test"] for name, entry in tuned.items()})
    saved = save_model(run_dir / "model", model, data, split)
    report = {
        "config": dataclasses.asdict(config), "data": data.report,
        "split": {"users": len(split.users), "skipped_users": split.skipped_users, "items": data.num_items,
                  "train_interactions": int(sum(len(t) for t in split.train)), "training_windows": trained_windows},
        "replicas": strategy.num_replicas_in_sync, "resumed_after_epoch": first_epoch or None,
        "valid_history": logger.history, "best_valid": logger.best, "test": results,
        "baseline_settings": {name: entry["settings"] for name, entry in tuned.items()},
        "gain_ndcg@10": _gains(results),
        "timings": {"train_seconds": round(train_seconds, 1), "valid_eval_seconds": round(logger.eval_seconds, 1),
                    "total_seconds": round(time.time() - started, 1), "passes": passes,
                    "optimizer_steps": int(model.optimizer.iterations.numpy()),
                    "train_windows_per_second": round(trained_windows * passes / max(train_seconds, 1e-9), 1)},
        "model_dir": str(saved), "tensorboard": f"tensorboard --logdir {run_dir}"}
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # finished: the model is saved
    return report


def _build_model(config: RecommendConfig, num_items: int, strategy) -> SequentialRecommender:
    with strategy.scope():
        model = SequentialRecommender(num_items=num_items, max_length=config.max_length, dim=config.dim,
                                      num_layers=config.num_layers, num_heads=config.num_heads,
                                      intermediate_dim=config.intermediate_dim, dropout=config.dropout,
                                      causal=config.arch == "sasrec")
        model(tf.zeros((1, config.max_length), tf.int32))
        model.compile(optimizer=adamw(learning_rate=config.learning_rate, weight_decay=config.weight_decay,
                                      epsilon=1e-8, exclude=("bias", "norm", "embedding")),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _validation(model, histories, targets, seed) -> dict:
    metrics = evaluate_scores(predict_scores(model, histories), histories, targets, seed=seed)
    return {**metrics, **{k.replace("@", "_"): v for k, v in metrics.items() if "@" in k}, "score": metrics["ndcg@10"]}


def _fit(config: RecommendConfig, *, model, split: LeaveOneOut, logger: EvalAndLog, verbose: int,
         batches_per_pass: int) -> tuple[int, float, int]:
    """Fits from the last finished epoch of an interrupted run with this config. Returns (epochs resumed after,
    training seconds without validation, passes over the training windows run)."""
    fingerprint = config_fingerprint(config, ignore=_NOT_FINGERPRINTED)
    checkpoints, resumed = resume_state(config.run_dir, model, logger, fingerprint=fingerprint, resume=config.resume)
    first_epoch = resumed["epoch"] if resumed else 0
    previous_seconds = resumed["train_seconds"] if resumed else 0.0
    if resumed and verbose:
        print(f"resuming {config.run_dir} after epoch {first_epoch} (best validation NDCG@10 "
              f"{resumed['best']['score']:.4f})")
    if config.arch == "sasrec":
        dataset = causal_dataset(split.train, config.max_length, batch_size=config.batch_size, seed=config.seed)
    else:
        dataset = masked_dataset(split.train, config.max_length, mask_id=model.mask_id,
                                 probability=config.mask_probability, batch_size=config.batch_size, seed=config.seed)
    epochs = math.ceil(config.epochs / config.eval_every)  # a Keras epoch = eval_every passes + one validation
    steps = batches_per_pass * config.eval_every  # the datasets repeat forever
    train_started = time.time()

    def train_clock() -> float:
        return round(previous_seconds + time.time() - train_started - logger.eval_seconds, 1)

    if not (resumed and resumed["stopped"]):
        model.fit(dataset, epochs=epochs, initial_epoch=first_epoch, steps_per_epoch=steps, verbose=verbose,
                  callbacks=[logger, EpochCheckpoint(directory=checkpoints, fingerprint=fingerprint, logger=logger,
                                                     train_clock=train_clock)])
    return first_epoch, train_clock(), len(logger.history) * config.eval_every


def _baselines(config: RecommendConfig, data: Interactions, split: LeaveOneOut) -> dict:
    out = {}
    test_histories = split.history("test")
    for cls in (baselines_lib.MostPopular, baselines_lib.ItemKNN, baselines_lib.ALS):
        model, settings, valid = baselines_lib.tune(cls, split.train, data.num_items, split.history("valid"),
                                                    split.valid, seed=config.seed)
        out[cls.name] = {"settings": settings, "valid": valid,
                         "test": evaluate_scores(model.scores(test_histories), test_histories, split.test,
                                                 seed=config.seed)}
    return out


def _gains(results: dict) -> dict:
    """Relative NDCG@10 gain of ours over each baseline."""
    ours = results["ours"]["ndcg@10"]
    return {name: round(ours / r["ndcg@10"] - 1, 3) for name, r in results.items()
            if name != "ours" and r["ndcg@10"] > 0}
