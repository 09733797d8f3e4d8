"""`moat monitor profile|report|follow`: watch a served model through its request logs."""
from __future__ import annotations

import json
from pathlib import Path

from moatkit.app.cli.common import add_verb

ACTIONS = {
    "profile": "write the reference profile of a model version from its dev split (export does this already)",
    "report": "read the logs once: report.json + report.html (drift per window, estimated vs realised accuracy)",
    "follow": "tail the logs: Prometheus gauges on 127.0.0.1:metrics_port and TensorBoard scalars, until Ctrl-C",
}


def monitor(args, config) -> None:
    if args.action == "profile":
        from moatkit.app.monitor_profile import profile_from_data
        from moatkit.data.core.errors import ConfigError

        base = Path(config.repo) / config.model
        versions = sorted(int(p.name) for p in base.glob("*") if p.is_dir() and p.name.isdigit())
        if not versions:
            raise ConfigError(f"no model versions under '{base}'", fix="set repo and model (or export one first)")
        version = config.version or versions[-1]
        data = config.data
        if data is None:
            raise ConfigError("config key 'data' is not set",
                              fix="pass the dev split the model was selected on: --set data=<split dir>")
        result = profile_from_data(base / str(version), data, vocabulary_data=config.vocabulary_data,
                                   text_field=config.text_field, label_field=config.label_field)
        print(json.dumps({"version_dir": str(base / str(version)), **result}))
    elif args.action == "report":
        from moatkit.serving.monitoring.report import run_report
        run_report(config)
    else:
        from moatkit.serving.monitoring.follow import follow
        follow(config)


def add_parsers(verbs) -> None:
    p = add_verb(verbs, "monitor", monitor, config="moatkit.serving.monitoring.config:MonitorConfig",
                 help="watch a served model: drift, label-free accuracy, realised accuracy, alerts",
                 description="Watch a served model through the server's request logs (model config logging_config)."
                             " Actions: " + "; ".join(f"{k}: {v}" for k, v in ACTIONS.items()))
    p.add_argument("action", choices=sorted(ACTIONS), help="profile, report or follow")
