"""`moat support build|serve|ask`: the customer-service assistant on a knowledge base."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from moatkit.app.cli.common import add_verb
from moatkit.data.core.errors import ConfigError


def support(args, config) -> None:
    if args.action == "build":
        from moatkit.app.support.build import build_support

        report = build_support(config, log=lambda line: print(line, file=sys.stderr))
        print((Path(config.out) / "report.md").read_text())
        print(json.dumps({"out": config.out, "support": report["support"]}))
    elif args.action == "serve":
        from moatkit.app.support.launch import serve_support

        serve_support(config.out, config.serve)
    else:
        if not args.question:
            raise ConfigError("`moat support ask` needs a question", fix='moat support ask "How do I ...?"')
        from moatkit.app.support.assistant import Assistant, read_support_file
        from moatkit.app.support.models import LocalModels

        built = read_support_file(config.out)
        models = LocalModels(built["encoder"]["dir"], (built["router"] or {}).get("dir"))
        reply = Assistant.from_build(config.out, models).reply(" ".join(args.question))
        print(json.dumps(reply, indent=2, ensure_ascii=False))


def add_parsers(verbs) -> None:
    parser = add_verb(
        verbs, "support", support, config="moatkit.app.support.config:SupportConfig",
        help="customer service: answer from a knowledge base, route by department, hand off what it cannot answer",
        description="build: load the knowledge base (--set 'kb=[faq.md, faq.csv]'; default catalog:python-faq), "
                    "export the sentence encoder, fine-tune and export the department router, index the answers, fit "
                    "the answer/clarify/hand-off thresholds on dev questions and write the evaluation to "
                    "<out>/report.md. serve: the chat service and page on serve.host:serve.port, calling the models "
                    "over gRPC (a moat-model-server is started unless serve.model_server is set). ask QUESTION: "
                    "one turn in-process, printed as JSON (the question before --set).")
    parser.add_argument("action", choices=("build", "serve", "ask"), help="what to do")
    parser.add_argument("question", nargs="*", help="for ask: the question")
