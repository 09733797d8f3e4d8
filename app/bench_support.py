"""The support assistant's latency and index benchmarks (`moat bench --set 'benchmarks=[support]'`, or
`python -m moatkit.app.bench_support`).

Latency: one chat turn end to end — HTTP POST /api/chat → the service → encoder and router over gRPC on a
`moat-model-server` → index → policy → JSON — as a client sees it, at 1 session (sequential turns) and at 16
concurrent sessions (closed loop, no think time: the per-session rate limit is lifted for the run). Messages are
the FAQ's own questions and off-topic chatter, as in traffic. Index: ScaNN against brute force at 100k keys.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class SupportBench:
    out: str = "artifacts/support"  # a `moat support build` dir (built with the defaults when missing)
    repo: str = "artifacts/models"
    turns_one_session: int = 200
    sessions: int = 16
    turns_per_session: int = 25
    warmup_turns: int = 10
    scann_keys: int = 100_000
    scann_queries: int = 1000
    seed: int = 0
    batching: bool = True  # the model server's --enable_batching (off: every request is its own forward pass)


CHATTER = ["hi, my order never arrived", "what's the weather in Paris tomorrow?", "thanks, that helped!",
           "How do I reset my password?", "who won the world cup in 2010?"]


def _messages(pool: list[str], count: int, seed: int) -> list[str]:
    return [pool[i] for i in np.random.default_rng(seed).integers(0, len(pool), count)]


def _turns(port: int, session: str, messages: list[str], latencies: list[float], errors: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for message in messages:
        body = json.dumps({"session": session, "message": message})
        started = time.perf_counter()
        conn.request("POST", "/api/chat", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1e3)
        if response.status != 200:
            errors.append(response.status)
    conn.close()


def _stats(latencies: list[float], seconds: float) -> dict:
    values = np.asarray(latencies)
    return {"turns": int(len(values)), "p50_ms": round(float(np.percentile(values, 50)), 2),
            "p95_ms": round(float(np.percentile(values, 95)), 2), "max_ms": round(float(values.max()), 2),
            "turns_per_s": round(len(values) / seconds, 1)}


def bench_latency(bench: SupportBench, *, log=print) -> dict:
    import tempfile

    from moatkit.app.support.config import ServeConfig
    from moatkit.app.support.kb import read_saved_knowledge_base
    from moatkit.app.support.launch import start_support

    out = Path(bench.out)
    pool = [e.question for e in read_saved_knowledge_base(out).entries] + CHATTER  # the FAQ's questions + chatter
    serve = ServeConfig(port=0, batching=bench.batching, turns_per_second=1e6, burst=10**6, log_dir=tempfile.mkdtemp(prefix="moat-bench-"))
    results = {}
    with start_support(out, serve) as handle:
        _turns(handle.port, "warmup", _messages(pool, bench.warmup_turns, bench.seed), [], [])
        for label, sessions, per in (("1_session", 1, bench.turns_one_session),
                                     (f"{bench.sessions}_sessions", bench.sessions, bench.turns_per_session)):
            latencies, errors = [], []
            threads = [threading.Thread(target=_turns, args=(handle.port, f"bench-{label}-{n}",
                                                             _messages(pool, per, bench.seed + n), latencies, errors))
                       for n in range(sessions)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            results[label] = {**_stats(latencies, time.perf_counter() - started), "errors": len(errors)}
            log(f"support latency {label}: {results[label]}")
    return results


def _clustered(rng, centers: np.ndarray, count: int) -> np.ndarray:
    """Unit vectors around topic centres (cosine ≈ 0.65 to their centre), like sentence embeddings of a large
    knowledge base: neighbours share a topic but are not near-copies."""
    vectors = centers[rng.integers(0, len(centers), count)] + rng.normal(size=(count, centers.shape[1])) * 0.06
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def bench_scann(bench: SupportBench, *, log=print) -> dict:
    """Recall@10 of the ScaNN index against brute force at `scann_keys` keys (one per entry), through
    AnswerIndex.search as the assistant calls it. The vectors are synthetic (embedding 100k real texts takes
    longer than this whole bench on 2 cores): 2,000 random topic centres, keys and queries drawn around them."""
    from moatkit.app.support.index import AnswerIndex

    rng = np.random.default_rng(bench.seed)
    centers = rng.normal(size=(2000, 384))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    keys, queries = _clustered(rng, centers, bench.scann_keys), _clustered(rng, centers, bench.scann_queries)
    owners, kinds, answers = np.arange(len(keys)), ["answer"] * len(keys), [""] * len(keys)
    started = time.perf_counter()
    indexes = {"scann": AnswerIndex(keys, owners, kinds, answers=answers, backend="scann")}
    built = time.perf_counter() - started
    indexes["brute"] = AnswerIndex(keys, owners, kinds, answers=answers, backend="brute")
    found, per_query = {}, {}
    for name, index in indexes.items():
        started = time.perf_counter()
        found[name] = np.concatenate([index.search(queries[i:i + 100], k=10)[0] for i in range(0, len(queries), 100)])
        per_query[name] = (time.perf_counter() - started) * 1e3 / len(queries)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found["scann"], found["brute"])])
    result = {"keys": len(keys), "queries": len(queries), "recall@10_vs_brute": round(float(recall), 4),
              "top1_agreement": round(float(np.mean(found["scann"][:, 0] == found["brute"][:, 0])), 4),
              "build_s": round(built, 1), "brute_ms_per_query": round(per_query["brute"], 3),
              "scann_ms_per_query": round(per_query["scann"], 3)}
    log(f"support index: {result}")
    return result


def run_support_bench(bench: SupportBench, *, log=print) -> dict:
    from moatkit.app.support.build import build_support
    from moatkit.app.support.config import SupportConfig

    if not (Path(bench.out) / "support.json").is_file():
        build_support(SupportConfig(out=bench.out, repo=bench.repo), log=log)
    report = json.loads((Path(bench.out) / "report.json").read_text())
    return {"quality": {k: report[k] for k in ("retrieval", "routing", "out_of_scope", "seed")},
            "latency": bench_latency(bench, log=log), "index": bench_scann(bench, log=log)}


def support_rows(result: dict) -> list[str]:
    """bench.md rows: ours beside the reference path (BM25 alone; brute force)."""
    systems = result["quality"]["retrieval"]["systems"]
    best = max(("embeddings", "hybrid"), key=lambda name: systems[name]["all"]["recall@1"])
    one, many, index = result["latency"]["1_session"], result["latency"], result["index"]
    many = next(v for k, v in many.items() if k != "1_session")
    return [f"| support: Python-FAQ answer recall@1 (all {systems[best]['all']['queries']} questions) | {best}: "
            f"{systems[best]['all']['recall@1']} | BM25: {systems['bm25']['all']['recall@1']} | "
            f"{systems[best]['all']['recall@1'] / systems['bm25']['all']['recall@1']:.2f} |",
            f"| support: chat turn end to end, p50 / p95 ms | 1 session: {one['p50_ms']} / {one['p95_ms']}; "
            f"16 sessions: {many['p50_ms']} / {many['p95_ms']} | | |",
            f"| support: index search ms/query at {index['keys']:,} keys (recall@10 vs brute "
            f"{index['recall@10_vs_brute']}) | ScaNN: {index['scann_ms_per_query']} | brute force: "
            f"{index['brute_ms_per_query']} | {index['brute_ms_per_query'] / index['scann_ms_per_query']:.2f} |"]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=SupportBench.out)
    parser.add_argument("--results", default="bench/results/support.json")
    args = parser.parse_args(argv)
    result = run_support_bench(SupportBench(out=args.out))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2))
    print(json.dumps({"latency": result["latency"], "index": result["index"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
