"""The deployment half of `moat iterate`: export → offline gate → canary → live gate → promote or roll back,
then the loop's report (report.json + report.md)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from moatkit.data.core.errors import ConfigError


def deploy_and_decide(config, state, run_dir: Path, *, base: Path, current: int, labels: list[str], log) -> dict:
    from moatkit.app.iterate.gate import offline_gate
    from moatkit.app.iterate.train import export_candidate

    exported = state.done("export")
    if exported is None:  # numbered only when published: refused candidates take no version number
        exported = state.finish("export", export_candidate(Path(state.done("train")["model_dir"]),
                                                           run_dir / "candidate", config.model, log=log))
    candidate_dir = Path(exported["version_dir"])
    blessing = state.done("gate")
    if blessing is None:
        golden = dict(config.golden) or default_golden(base / str(current))
        blessing = state.finish("gate", offline_gate(base / str(current), candidate_dir, golden, labels, config,
                                                     run_dir / "gate"))
        log(f"offline gate: {'blessed' if blessing['blessed'] else 'REFUSED'} (run_dir/gate/blessing.md)")
    if not blessing["blessed"] and not config.skip_offline_gate:
        return _report(config, state, run_dir, "refused by the offline gate", None, log)
    if not config.deploy:
        outcome = "blessed" if blessing["blessed"] else "refused (skip_offline_gate)"
        return _report(config, state, run_dir, f"{outcome}, not deployed (deploy: false)", None, log)
    server = _server(config, log)
    if state.done("publish") is None:
        server.check_stable(current)
        server.pin(current)  # before the dir appears: no `latest` poll may load it ahead of the canary
        from moatkit.models.export import next_version

        state.finish("publish", {"version": next_version(base), "transitions": server.transitions})
    version = state.done("publish")["version"]
    if state.done("canary") is None:
        from moatkit.app.iterate.rollout import publish_version
        from moatkit.data.core.errors import ModelError

        publish_version(candidate_dir, base, version)
        server.transitions = []
        try:
            server.canary(current, version, config.canary_percent)
        except ModelError as err:  # it failed to load: out of service for good, recorded as a roll back
            log(f"canary: {err}")
            server.rollback(current, version)
            state.finish("decide", {"decision": "rolled back (the candidate failed to load)", "error": str(err),
                                    "transitions": server.transitions})
            return _report(config, state, run_dir, state.done("decide")["decision"], version, log)
        state.finish("canary", {"transitions": server.transitions, "started": time.time()})
    if state.done("live") is None:
        state.finish("live", _live(config, base / str(current), current, version, labels, log))
    live = state.done("live")
    log(f"live gate: {'passed' if live['passed'] else 'FAILED'} over {live['canary_answers']} canary answers")
    if state.done("decide") is None:
        server.transitions = []
        if live["passed"]:
            from moatkit.app.iterate.rollout import prune_versions

            server.promote(current, version)
            pruned = prune_versions(base, config.keep_versions, served={version, current})
            state.finish("decide", {"decision": "promoted", "transitions": server.transitions, "pruned": pruned})
        else:
            server.rollback(current, version)
            state.finish("decide", {"decision": "rolled back", "transitions": server.transitions})
    return _report(config, state, run_dir, state.done("decide")["decision"], version, log)


def default_golden(current_dir: Path) -> dict:
    from moatkit.models.export import source_of

    source = source_of(current_dir)
    split = source.get("origin_split_dir") or source.get("split_dir")
    if not split or not (Path(split) / "test").is_dir():
        raise ConfigError("no golden slices: the version records no test split",
                          fix="name them: --set golden.original=<test dir> --set golden.new=<held-out dir>")
    return {"original": str(Path(split) / "test")}


def _server(config, log, *, base: Path | None = None):
    """The server's config entry for the model; with `base`, checked to serve from that repository dir."""
    from moatkit.app.iterate.rollout import Server

    server = Server(grpc=config.grpc, model=config.model, config_file=config.model_config_file, log=log)
    if base is not None and server.base_path.resolve() != base.resolve():
        raise ConfigError(f"'{config.model_config_file}' serves {config.model!r} from '{server.base_path}', "
                          f"not from '{base}'", fix="set repo to the dir above the served base_path")
    return server


def _live(config, current_dir: Path, current: int, version: int, labels: list[str], log) -> dict:
    from moatkit.app.iterate.live import collect, live_gate, probe
    from moatkit.serving.monitoring.logs import LogReader
    from moatkit.serving.monitoring.model_runner import VersionModel

    reader = LogReader(config.logs, model=config.model, labels=labels)
    reader.poll()  # the window starts now: what was logged before the canary is not its traffic
    rows = collect(reader, versions=(current, version), needed=config.live_requests,
                   timeout=config.live_timeout_s, log=log)
    text = next((r.text for r in rows[version] or rows[current]), "a probe sentence")
    probes = {label: probe(config.rest, config.model, label, text, config.probes) for label in ("stable", "canary")}
    return live_gate(rows, versions=(current, version), stable_model=VersionModel(current_dir), labels=labels,
                     config=config, probes=probes)


def _report(config, state, run_dir: Path, outcome: str, version: int, log) -> dict:
    steps = state.data["steps"]
    report = {"outcome": outcome, "model": config.model, "current": steps["start"]["current"], "candidate": version,
              "steps": steps}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    named = f"candidate version {version}" if version else "the candidate (never published)"
    lines = [f"# moat iterate: {outcome}", "", f"Version {report['current']} of `{config.model}` → {named}.", ""]
    if (run_dir / "gate" / "blessing.md").is_file():
        lines += ["## Offline gate", "", *(run_dir / "gate" / "blessing.md").read_text().splitlines()[2:], ""]
    if "live" in steps:
        lines += ["## Live gate", "", "| check | value | threshold | passed |", "|---|---:|---:|---|"]
        lines += [f"| {c['check']} | {c['value']} | {c['threshold']} | {'yes' if c['passed'] else 'NO'} |"
                  for c in steps["live"]["checks"]]
        lines.append("")
    transitions = [t for name in ("publish", "canary", "decide") for t in steps.get(name, {}).get("transitions", [])]
    if transitions:
        lines += ["## Transitions", ""] + [f"- {time.strftime('%H:%M:%S', time.localtime(t['time']))} "
                                            f"{t['action']}: versions {t['versions']}, labels {t['labels']}"
                                            for t in transitions]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    log(f"iterate: {outcome} (report: {run_dir / 'report.md'})")
    return {"status": outcome, "candidate": version, "report": str(run_dir / "report.json")}
