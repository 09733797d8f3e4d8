"""`moat iterate`: from a served version's logged traffic to a gated, canaried and promoted successor."""
from __future__ import annotations

import json

from moatkit.app.cli.common import add_verb


def iterate(args, config) -> None:
    from moatkit.app.iterate.loop import run_iterate

    print(json.dumps(run_iterate(config)))


def add_parsers(verbs) -> None:
    add_verb(verbs, "iterate", iterate, config="moatkit.app.iterate.config:IterateConfig",
             help="improve a served model from its traffic: select → annotate → train → gate → canary → promote",
             description="Improve a served model from its logged traffic in one resumable run: select texts to "
                         "annotate (uncertainty + drift + diversity), stop until --set annotations=FILE names the "
                         "answers, train a warm-started candidate on old data + new labels, gate it offline per "
                         "slice, deploy it as a canary (labels + config reload), gate it live, then promote it or "
                         "roll it back. Rerun the same command to resume after a kill.")
