"""`moat opinion adapt|run|serve`: financial opinion monitoring of a text stream against a watch-list."""
from __future__ import annotations

import json
import sys

from moatkit.app.cli.common import add_verb


def opinion(args, config) -> None:
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    if args.action == "adapt":
        from moatkit.app.opinion.adapt import adapt

        report = adapt(config.adapt, out=config.out, repo=config.repo, general_model=args.general_model, log=log)
        print(json.dumps({"gold": report["gold"], "macro_f1_gain": report["macro_f1_gain"],
                          **{k: {m: v[m] for m in ("version_dir", "accuracy", "macro_f1")}
                             for k, v in report["models"].items()}}, indent=2))
    elif args.action == "run":
        from moatkit.app.opinion.launch import run_opinion

        report = run_opinion(config, log=log)
        print(json.dumps({"out": config.out, "alerts": report["alerts"], "counts": report["counts"],
                          "stream": {k: report["stream"][k] for k in ("read", "kept", "out_of_order", "dropped")}}))
    else:
        from moatkit.app.opinion.launch import serve_opinion

        serve_opinion(config, log=log)


def add_parsers(verbs) -> None:
    parser = add_verb(
        verbs, "opinion", opinion, config="moatkit.app.opinion.config:OpinionConfig",
        help="opinion monitoring: sentiment per watched entity in a text stream, negative spikes alerted, dashboard",
        description="adapt: fine-tune the general sentiment model (MR) and a finance model on weak labels over "
                    "business news (Loughran–McDonald lexicon, movement patterns, the general model), score both on "
                    "the human gold set (adapt.gold) → <out>/adapt.json. run: score the stream (--set "
                    "'stream.sources=[posts.jsonl, catalog:bbc-business, tail:incoming/]') through the served model, "
                    "match the watch-list (--set watchlist=FILE.yaml), raise negative-share and negative-volume "
                    "alerts → <out>/alerts.jsonl, scored.jsonl, report.json (and the webhook). serve: the same with "
                    "the dashboard on host:port, kept up until Ctrl-C.")
    parser.add_argument("action", choices=("adapt", "run", "serve"), help="what to do")
    parser.add_argument("--general-model", default=None,
                        help="adapt: an exported two-class sentiment version dir to use as the general model "
                             "instead of fine-tuning one on MR")
