"""Recommendation benchmarks (`moat bench --set 'benchmarks=[recommend]'`, or `python -m moatkit.app.bench_recommend`).

- quality: `moat recommend train` per seed on MovieLens 100K (leave-one-out, full ranking over the catalogue,
  seen items excluded): ours beside the tuned most-popular, item-kNN and ALS baselines, mean ± std over seeds;
  training time and windows/s.
- serving: a top-10 request for one history of 50 items, p50/p90 latency over sequential calls, in-process (the
  loaded SavedModel's serving_default) vs moat-model-server over REST and gRPC; and whether the served top-10 equals
  the in-process one for 100 users (exact ids).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from moatkit.models.recommend.config import RecommendConfig


@dataclasses.dataclass
class RecommendBench:
    out: str = "artifacts/bench/recommend"
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    train: dict = dataclasses.field(default_factory=dict)  # RecommendConfig overrides (e.g. {"epochs": 10})
    requests: int = 200
    parity_users: int = 100


def _summary(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)}


def bench_quality(bench: RecommendBench, *, log=print) -> dict:
    from moatkit.models.recommend.train import train_recommender

    runs = []
    for seed in bench.seeds:
        config = RecommendConfig(**{**bench.train, "seed": seed, "run_dir": f"{bench.out}/seed-{seed}",
                                    "repo": f"{bench.out}/models", "export": seed == bench.seeds[0],
                                    "resume": False})
        report = train_recommender(config, verbose=0)
        log(f"seed {seed}: " + ", ".join(f"{k} NDCG@10 {v['ndcg@10']:.4f}" for k, v in report["test"].items()))
        runs.append(report)
    models = list(runs[0]["test"])
    summary = {name: {metric: _summary([r["test"][name][metric] for r in runs])
                      for metric in ("hr@10", "ndcg@10", "hr@20", "ndcg@20")} for name in models}
    gains = {name: _summary([r["gain_ndcg@10"][name] for r in runs]) for name in runs[0]["gain_ndcg@10"]}
    return {"summary": summary, "gain_ndcg@10": gains, "split": runs[0]["split"],
            "config": {k: v for k, v in runs[0]["config"].items() if k not in ("seed", "run_dir", "repo")},
            "baseline_settings": [r["baseline_settings"] for r in runs],
            "train_seconds": _summary([r["timings"]["train_seconds"] for r in runs]),
            "train_windows_per_second": _summary([r["timings"]["train_windows_per_second"] for r in runs]),
            "passes": [r["timings"]["passes"] for r in runs], "export": runs[0]["export"],
            "model_dir": runs[0]["model_dir"]}


def _percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2)}


def bench_serving(bench: RecommendBench, export: dict) -> dict:
    import tensorflow as tf

    from moatkit.serving.client import grpc_predict, rest_request
    from moatkit.serving.process import ServerProcess

    signature = tf.saved_model.load(export["path"]).signatures["serving_default"]
    meta = json.loads((Path(export["path"]) / "assets.extra" / "moat_recommender.json").read_text())
    model_dir = Path(meta["model_dir"])
    items = json.loads((model_dir / "recommender.json").read_text())["items"][1:]
    rng = np.random.default_rng(0)
    histories = np.array([rng.choice([int(i) for i in items], size=50, replace=False)
                          for _ in range(bench.parity_users)], np.int64)
    one = histories[:1]

    def timed(call) -> list[float]:
        for _ in range(5):
            call()
        out = []
        for _ in range(bench.requests):
            tick = time.perf_counter()
            call()
            out.append(time.perf_counter() - tick)
        return out

    name = export["model_name"]
    local = timed(lambda: signature(history=tf.constant(one)))
    with ServerProcess(model_name=name, model_base_path=str(Path(export["path"]).parent)) as server:
        path, grpc = f"/v1/models/{name}:predict", server.grpc_address
        rest = timed(lambda: rest_request(server.rest_address, path, {"inputs": {"history": one.tolist()}}))
        grpc_times = timed(lambda: grpc_predict(grpc, name, {"history": one}))
        served = np.array(grpc_predict(grpc, name, {"history": histories})["item_ids"])
        served_rest = np.array(rest_request(server.rest_address, path,
                                            {"inputs": {"history": histories.tolist()}})["outputs"]["item_ids"])
    in_process = signature(history=tf.constant(histories))["item_ids"].numpy()
    return {"in_process": _percentiles(local), "rest": _percentiles(rest), "grpc": _percentiles(grpc_times),
            "history_length": 50, "k": export["top_k"], "requests": bench.requests,
            "parity_users": bench.parity_users,
            "grpc_top_k_equal_users": int((served == in_process).all(axis=1).sum()),
            "rest_top_k_equal_users": int((served_rest == in_process).all(axis=1).sum())}


def run_recommend_bench(bench: RecommendBench, *, log=print) -> dict:
    Path(bench.out).mkdir(parents=True, exist_ok=True)
    quality = bench_quality(bench, log=log)
    results = {"quality": quality, "serving": bench_serving(bench, quality["export"])}
    (Path(bench.out) / "bench.json").write_text(json.dumps(results, indent=2))
    return results


def recommend_rows(results: dict) -> list[str]:
    q, s = results["quality"], results["serving"]
    lines = [f"MovieLens 100K, leave-one-out, full ranking over {q['split']['items']} items, {q['split']['users']} "
             f"test users, mean ± std over {len(q['passes'])} seeds:", "",
             "| model | HR@10 | NDCG@10 | HR@20 | NDCG@20 |", "|---|---|---|---|---|"]
    for name, m in q["summary"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}"
                                              for k in ("hr@10", "ndcg@10", "hr@20", "ndcg@20")) + " |")
    lines += ["", "NDCG@10 gain of ours: " + ", ".join(f"{k} {v['mean']:+.1%}" for k, v in q["gain_ndcg@10"].items()),
              f"Training: {q['train_seconds']['mean']:.0f} s per run ({q['passes']} passes), "
              f"{q['train_windows_per_second']['mean']:.0f} windows/s", "",
              f"Top-{s['k']} for a {s['history_length']}-item history, {s['requests']} sequential calls: in-process "
              f"p50 {s['in_process']['p50_ms']} ms, REST {s['rest']['p50_ms']} ms, gRPC {s['grpc']['p50_ms']} ms; "
              f"served = in-process top-{s['k']} for {s['grpc_top_k_equal_users']}/{s['parity_users']} users (gRPC), "
              f"{s['rest_top_k_equal_users']}/{s['parity_users']} (REST)"]
    return lines


if __name__ == "__main__":
    outcome = run_recommend_bench(RecommendBench())
    print("\n".join(recommend_rows(outcome)))
