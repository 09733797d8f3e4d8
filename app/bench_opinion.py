"""Opinion monitoring benchmarks (`moat bench --set 'benchmarks=[opinion]'`, or `python -m moatkit.app.bench_opinion`).

- sentiment: `moat opinion adapt` per seed — the general (MR) model and the finance model (weak labels on BBC
  business sentences) on the same human gold test split: accuracy and macro-F1, mean over seeds.
- spikes: a real background stream (BBC business sentences, tweets, Amazon reviews, movie dialogue, shuffled, so
  it holds no real bursts) scored by the finance model; false alarms per 10,000 items with no injection; then
  bursts injected at random places: B items naming a watched entity, each a held-out gold-negative text with prob.
  s = min(0.95, shift · the entity's own base share), else a gold neutral/positive one. The entity's name replaces
  the first capitalised name after a text's first word (the party the text talks about). Detection delay = the
  entity's mentions from the burst's first item to the alert.
- throughput: texts/s through the monitor end to end (matching, detectors, alerts) with the model in-process and
  served by moat-model-server over gRPC (batching on), and the largest score difference between the two.
"""
from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from moatkit.app.opinion.config import AdaptConfig, DetectConfig, DEFAULT_WATCHLIST
from moatkit.app.opinion.scorer import LocalScorer
from moatkit.app.opinion.stream import Item


@dataclasses.dataclass
class OpinionBench:
    out: str = "artifacts/bench/opinion"
    repo: str = "artifacts/bench/opinion/models"
    seeds: list[int] = dataclasses.field(default_factory=lambda: [13, 14, 15])
    background: dict = dataclasses.field(default_factory=lambda: {"bbc-business": None, "tweets": 2000,
                                                                  "amazon": 1000, "movie-dialog": 2000})
    bursts: list[list[float]] = dataclasses.field(default_factory=lambda: [[20, 3.0], [50, 3.0], [100, 3.0],
                                                                           [50, 2.0], [50, 5.0]])  # [size, shift]
    trials: int = 20
    gap: int = 2  # background items between two burst items
    min_mentions: int = 30  # burst targets: entities with this many natural mentions in the background ...
    max_base_share: float = 0.3  # ... and a base share a 3× burst can reach (Yukos's news is 66 % negative)
    throughput_texts: int = 2000
    seed: int = 0


class CachedScorer:
    """The real scorer, each distinct text scored once (trials replay the same texts many times)."""

    def __init__(self, scorer):
        self.scorer, self.labels, self.cache = scorer, scorer.labels, {}

    def probabilities(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            from tqdm.auto import tqdm

            chunks = range(0, len(missing), 512)
            for i in tqdm(chunks, desc="scoring", unit="chunk", disable=len(chunks) < 4, leave=False):
                self.cache.update(zip(missing[i:i + 512], self.scorer.probabilities(missing[i:i + 512])))
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, len(self.labels)))


_NAME = re.compile(r"(?<=\s)[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*")


def with_entity(text: str, entity: str) -> str | None:
    """The text with its first capitalised name after the first word replaced by `entity`; None without one."""
    match = _NAME.search(text)
    return None if match is None else text[:match.start()] + entity + text[match.end():]


def run_sentiment(bench: OpinionBench, *, log=print) -> dict:
    """`moat opinion adapt` per seed (a rerun reuses every trained model and only scores again)."""
    from moatkit.app.opinion.adapt import adapt

    reports = {}
    for seed in bench.seeds:
        log(f"sentiment: adapt with seed {seed}")
        reports[seed] = adapt(AdaptConfig(seed=seed, general_name="general", name="finance"),
                              out=Path(bench.out) / f"adapt-{seed}", repo=bench.repo, log=log)
    return sentiment_summary(reports)


def sentiment_summary(reports: dict) -> dict:
    runs = {seed: {**{k: {m: v[m] for m in ("accuracy", "macro_f1", "f1", "decision", "version_dir")}
                      for k, v in report["models"].items()}, "gold": report["gold"]}
            for seed, report in reports.items()}
    seeds = list(runs)
    summary = {}
    for key in ("general", "finance"):
        for metric in ("accuracy", "macro_f1"):
            values = [runs[s][key][metric] for s in seeds]
            summary[f"{key}_{metric}"] = {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)}
    gains = [runs[s]["finance"]["macro_f1"] - runs[s]["general"]["macro_f1"] for s in seeds]
    summary["macro_f1_gain"] = {"mean": round(float(np.mean(gains)), 4), "min": round(float(min(gains)), 4)}
    return {"runs": runs, "summary": summary, "gold": runs[seeds[0]]["gold"]}


def _background(bench: OpinionBench) -> list[tuple[str, str]]:
    from moatkit.data.dataset import read_records
    from moatkit.data.fetch import fetch

    rng = np.random.default_rng(bench.seed)
    pool = []
    for name, limit in bench.background.items():
        records = read_records(fetch(name))
        chosen = rng.permutation(len(records))[:limit] if limit else range(len(records))
        pool += [(f"{name}:{records[i]['id']}", records[i]["text"]) for i in chosen]
    return [pool[i] for i in rng.permutation(len(pool))]


def _stream(rows: list[tuple[str, str]]) -> list[Item]:
    return [Item(id=rid, text=text, time=1_767_571_200 + 6.0 * n, source=rid.split(":")[0], provenance=rid)
            for n, (rid, text) in enumerate(rows)]


def _monitor(watchlist, scorer, decision):
    from moatkit.app.opinion.monitor import OpinionMonitor

    return OpinionMonitor(watchlist, scorer, DetectConfig(), decision=decision)


def _run(monitor, items: list[Item], batch: int = 256) -> None:
    for i in range(0, len(items), batch):
        monitor.process(items[i:i + batch])


def _injection_pool(gold_test: list[dict]) -> dict[str, list[str]]:
    """Held-out gold texts that name a party, by class: negative / other."""
    pool = {"negative": [], "other": []}
    for record in gold_test:
        if with_entity(record["text"], "X") is not None:
            pool["negative" if record["label"] == "negative" else "other"].append(record["text"])
    return pool


def _trial(bench, watchlist, scorer, decision, background, pool, entity, base, size, shift, rng) -> dict:
    share = min(0.95, shift * base)
    start = int(rng.integers(int(0.4 * len(background)), int(0.8 * len(background))))
    burst, negatives = [], 0
    for n in range(int(size)):
        negative = rng.random() < share
        negatives += negative
        text = pool["negative" if negative else "other"][int(rng.integers(len(pool["negative" if negative else "other"])))]
        burst.append((f"burst:{n}", with_entity(text, entity)))
    rows = list(background[:start])
    for n, row in enumerate(burst):
        rows.append(row)
        rows += background[start + n * bench.gap:start + (n + 1) * bench.gap]
    rows += background[start + len(burst) * bench.gap:]
    items = _stream(rows)
    burst_start = items[start].time
    monitor = _monitor(watchlist, scorer, decision)
    _run(monitor, items)
    mentions_before = sum(1 for it in items[:start] if entity in watchlist.match(it.text))
    hits = [a for a in monitor.alerts if a["entity"] == entity and _seconds(a["time"]) >= burst_start]
    delay = None
    if hits:
        until = _seconds(hits[0]["time"])
        delay = sum(1 for it in items[start:] if it.time <= until and entity in watchlist.match(it.text))
    false = [a for a in monitor.alerts if not (a["entity"] == entity and _seconds(a["time"]) >= burst_start)]
    return {"entity": entity, "base_share": round(base, 4), "burst_share": round(negatives / max(1, size), 4),
            "mentions_before": mentions_before, "delay": delay, "detector": hits[0]["detector"] if hits else None,
            "other_alerts": len(false), "items": len(items)}


def _seconds(iso_time: str) -> float:
    from moatkit.app.opinion.stream import parse_time
    return parse_time(iso_time)


def run_spikes(bench: OpinionBench, version_dir: str, decision: dict, gold_test: list[dict], *, log=print) -> dict:
    from moatkit.app.opinion.watchlist import load_watchlist

    watchlist = load_watchlist(DEFAULT_WATCHLIST)
    scorer = CachedScorer(LocalScorer(version_dir))
    background = _background(bench)
    pool = _injection_pool(gold_test)
    log(f"spikes: {len(background)} background items, injection pool {len(pool['negative'])} negative + "
        f"{len(pool['other'])} other gold texts")
    scorer.probabilities([t for _, t in background] + [with_entity(t, "X") for t in pool["negative"] + pool["other"]])
    monitor = _monitor(watchlist, scorer, decision)
    _run(monitor, _stream(background))
    summary = monitor.summary()["entities"]
    alarms = {"per_10k_items": round(len(monitor.alerts) / len(background) * 10_000, 3), "alerts": len(monitor.alerts),
              "items": len(background), "by_detector": {d: sum(a["detector"] == d for a in monitor.alerts)
                                                        for d in ("negative-share", "negative-volume")},
              "alerted": [{k: a[k] for k in ("entity", "detector", "time")} for a in monitor.alerts]}
    targets = {name: row["negative_share"] for name, row in summary.items()
               if name != "(market)" and row["mentions"] >= bench.min_mentions
               and row["negative_share"] <= bench.max_base_share}
    log(f"spikes: background false alarms {alarms['alerts']} in {len(background)} items; targets {targets}")
    rng = np.random.default_rng(bench.seed)
    bursts = []
    for size, shift in bench.bursts:
        trials = []
        for t in range(bench.trials):
            entity = sorted(targets)[t % len(targets)]
            trials.append(_trial(bench, watchlist, scorer, decision, background, pool, entity,
                                 max(targets[entity], 0.01), size, shift, rng))
        delays = [x["delay"] for x in trials if x["delay"] is not None]
        within = [d for d in delays if d <= max(50, size)]
        bursts.append({"size": int(size), "shift": shift, "trials": len(trials),
                       "detected": len(delays), "detected_within_50": sum(d <= 50 for d in delays),
                       "detected_within_size": len(within),
                       "median_delay": float(np.median(delays)) if delays else None,
                       "p90_delay": float(np.percentile(delays, 90)) if delays else None,
                       "mean_burst_share": round(float(np.mean([x["burst_share"] for x in trials])), 4),
                       "mean_base_share": round(float(np.mean([x["base_share"] for x in trials])), 4),
                       "other_alerts_per_10k": round(sum(x["other_alerts"] for x in trials)
                                                     / sum(x["items"] for x in trials) * 10_000, 3),
                       "runs": trials})
        log(f"spikes: size {size} × {shift}: detected {len(delays)}/{len(trials)}, median delay "
            f"{bursts[-1]['median_delay']}")
    return {"background": alarms, "targets": targets, "bursts": bursts,
            "entities": {name: {k: row[k] for k in ("mentions", "negative_share")} for name, row in summary.items()}}


def run_throughput(bench: OpinionBench, version_dir: str, decision: dict, *, log=print) -> dict:
    import contextlib

    from moatkit.app.opinion.launch import _scorer
    from moatkit.app.opinion.config import OpinionConfig
    from moatkit.app.opinion.watchlist import load_watchlist

    watchlist = load_watchlist(DEFAULT_WATCHLIST)
    items = _stream(_background(bench)[:bench.throughput_texts])
    results, scores = {}, {}
    for scoring in ("local", "served"):
        config = OpinionConfig(scoring=scoring, model=version_dir)
        with contextlib.ExitStack() as stack:
            scorer = stack.enter_context(_scorer(config, Path(version_dir), stack))
            _run(_monitor(watchlist, scorer, decision), items[:128], batch=config.stream.batch_size)  # warm-up
            monitor = _monitor(watchlist, scorer, decision)
            started = time.perf_counter()
            _run(monitor, items, batch=config.stream.batch_size)
            seconds = time.perf_counter() - started
            scores[scoring] = scorer.probabilities([it.text for it in items])
        results[scoring] = {"texts": len(items), "seconds": round(seconds, 2),
                            "texts_per_s": round(len(items) / seconds, 1)}
        log(f"throughput {scoring}: {results[scoring]['texts_per_s']} texts/s")
    results["max_abs_score_diff"] = float(np.abs(scores["local"] - scores["served"]).max())
    results["served_vs_local"] = round(results["served"]["texts_per_s"] / results["local"]["texts_per_s"], 3)
    results["beam"] = _beam_throughput(version_dir, items, scores["local"])
    log(f"throughput beam: {results['beam']}")
    return results


def _beam_throughput(version_dir: str, items: list[Item], local: np.ndarray) -> dict | None:
    """The Beam pipeline (DirectRunner, .venv-beam) over the same texts, start-up included."""
    import subprocess

    beam_python = Path(__file__).resolve().parents[1] / ".venv-beam" / "bin" / "python"
    if not beam_python.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "items.jsonl").write_text("".join(json.dumps({"id": f"t{n}", "text": it.text}) + "\n"
                                                       for n, it in enumerate(items)))
        started = time.perf_counter()
        subprocess.run([str(beam_python), "-m", "moatkit.app.opinion.beam_score", "--model", version_dir, "--input",
                        f"{tmp}/items.jsonl", "--output", f"{tmp}/scored", "--runner", "DirectRunner"], check=True,
                       capture_output=True, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        rows = {}
        for shard in Path(tmp).glob("scored-*.jsonl"):
            for line in shard.read_text().splitlines():
                row = json.loads(line)
                rows[row["id"]] = row["probabilities"]
    beam = np.array([rows[f"t{n}"] for n in range(len(local))])
    differ = np.abs(beam - local).max(axis=1)
    return {"texts": len(items), "seconds": round(seconds, 2), "texts_per_s": round(len(items) / seconds, 1),
            "max_abs_diff_vs_local": float(differ.max()), "texts_differing_1e-5": int((differ > 1e-5).sum()),
            "labels_equal": float((beam.argmax(axis=1) == local.argmax(axis=1)).mean())}


def run_opinion_bench(bench: OpinionBench, *, log=print) -> dict:
    from moatkit.app.opinion.adapt import gold_splits

    sentiment = run_sentiment(bench, log=log)
    first = sentiment["runs"][bench.seeds[0]]["finance"]
    gold_test = gold_splits(AdaptConfig(seed=bench.seeds[0]))["test"]
    results = {"sentiment": sentiment,
               "spikes": run_spikes(bench, first["version_dir"], first["decision"], gold_test, log=log),
               "throughput": run_throughput(bench, first["version_dir"], first["decision"], log=log),
               "config": dataclasses.asdict(bench)}
    out = Path(bench.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text("\n".join(opinion_rows(results)) + "\n")
    return results


def opinion_rows(results: dict) -> list[str]:
    s, spikes, tp = results["sentiment"]["summary"], results["spikes"], results["throughput"]
    gold = results["sentiment"]["gold"]
    lines = [f"Sentiment on {gold['source']} gold test ({gold['test']} texts, 3 classes), mean ± std over seeds:", "",
             "| model | accuracy | macro-F1 |", "|---|---|---|"]
    for key in ("general", "finance"):
        a, f = s[f"{key}_accuracy"], s[f"{key}_macro_f1"]
        lines.append(f"| {key} | {a['mean']:.3f} ± {a['std']:.3f} | {f['mean']:.3f} ± {f['std']:.3f} |")
    lines += ["", f"macro-F1 gain: {s['macro_f1_gain']['mean']:+.3f} (smallest {s['macro_f1_gain']['min']:+.3f})", "",
              f"Background false alarms: {spikes['background']['alerts']} in {spikes['background']['items']} items "
              f"= {spikes['background']['per_10k_items']} per 10,000", "",
              "| burst size | shift | detected | within 50 | median delay | p90 delay | burst share | base share |",
              "|---|---|---|---|---|---|---|---|"]
    for b in spikes["bursts"]:
        lines.append(f"| {b['size']} | {b['shift']}× | {b['detected']}/{b['trials']} | {b['detected_within_50']} | "
                     f"{b['median_delay']} | {b['p90_delay']} | {b['mean_burst_share']} | {b['mean_base_share']} |")
    lines += ["", f"Throughput (end to end through the monitor): in-process {tp['local']['texts_per_s']} texts/s, "
              f"served (gRPC, batching) {tp['served']['texts_per_s']} texts/s; max |score difference| "
              f"{tp['max_abs_score_diff']:.2e}"]
    if tp.get("beam"):
        b = tp["beam"]
        lines.append(f"Beam DirectRunner (RunInference, start-up included): {b['texts_per_s']} texts/s; labels equal to "
                     f"in-process for {b['labels_equal']:.1%}, probabilities for all but {b['texts_differing_1e-5']} "
                     f"texts (max |difference| {b['max_abs_diff_vs_local']:.2e})")
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OpinionBench.out)
    parser.add_argument("--trials", type=int, default=OpinionBench.trials)
    args = parser.parse_args(argv)
    print("\n".join(opinion_rows(run_opinion_bench(OpinionBench(out=args.out, repo=f"{args.out}/models",
                                                                 trials=args.trials)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
