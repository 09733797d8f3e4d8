"""`moat demo` and `moat bench`: the whole life cycle end to end, and the benchmarks."""
from __future__ import annotations

from moatkit.app.cli.common import add_verb


def demo(args, config) -> None:
    from moatkit.app.pipeline import run_demo
    run_demo(config)


def bench(args, config) -> None:
    from moatkit.app.bench import run_bench
    run_bench(config)


def add_parsers(verbs) -> None:
    add_verb(verbs, "demo", demo, config="moatkit.app.pipeline:DemoConfig",
             help="end to end on real data: fetch, fine-tune, export, serve, query, summarise")
    add_verb(verbs, "bench", bench, config="moatkit.app.bench:BenchConfig",
             help="benchmarks (JSON + markdown table under bench/results/)")
