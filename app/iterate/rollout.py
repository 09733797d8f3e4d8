"""Steps 4-5 of `moat iterate`: canary, live gate, promote or roll back, through the server's own interfaces.

Transitions are model config changes, written to the server's --model_config_file (atomically, so a poll never
reads half a file) and applied at once with ModelService/HandleReloadConfigRequest, which the real
tensorflow_model_server has too; a refused or failed reload puts the files back as they were. The routing file
(serving/routing.py) stays once written, so unversioned requests always go to `stable`, and `canary` always names a
loaded version (the stable one when there is no canary). Order matters so that no request fails and each is
answered by one version:
- pin: only the current version, both labels on it, before the candidate's dir appears (a `latest` policy would
  otherwise load it on the next file-system poll);
- canary: load the candidate beside it, wait until AVAILABLE (TF Serving assigns labels only to loaded versions),
  then point `canary` at it with canary_percent of the unversioned requests;
- promote: both labels to the candidate, then the old version unloaded;
- roll back: both labels back to the current version, the candidate unloaded and its dir moved to
  <base>/rejected/, so no server, restarted or not, picks it up again (and its number is never reused).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from moatkit.data.core.errors import ConfigError, ModelError
from moatkit.models.export import REJECTED_DIR
from moatkit.serving.routing import ROUTING_FILE

STABLE, CANARY = "stable", "canary"


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


CANDIDATE_MARK = "assets.extra/moat_candidate.json"  # which loop's candidate a version dir is


def publish_version(candidate_dir: Path, base: Path, version: int) -> Path:
    """Copies the gated candidate into the model repository as <base>/<version>, atomically. The same candidate
    copied before (same mark) is reused; another model under that number is an error: a version is never
    written twice."""
    final = base / str(version)
    mark = (candidate_dir / CANDIDATE_MARK).read_text()
    if final.exists() or (base / REJECTED_DIR / str(version)).exists():
        if (final / CANDIDATE_MARK).is_file() and (final / CANDIDATE_MARK).read_text() == mark:
            return final
        raise ModelError(f"version {version} already exists under '{base}' and is not this loop's candidate",
                         fix="start a new run_dir (the loop picks the next free version)")
    if not os.access(base, os.W_OK):
        raise ConfigError(f"the model repository '{base}' is not writable", fix="fix its permissions or set repo")
    staging = base / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(candidate_dir, staging)
    staging.rename(final)
    return final


class Server:
    """The served model's config entry, rewritten and reloaded at each transition."""

    def __init__(self, *, grpc: str, model: str, config_file: str | None, log):
        if not config_file or not Path(config_file).is_file():
            raise ConfigError(f"model_config_file {config_file!r} is not a file",
                              fix="set model_config_file to the server's --model_config_file (labels and request "
                                  "logging live there)")
        self.grpc, self.model, self.config_file, self.log = grpc, model, Path(config_file), log
        self.transitions: list[dict] = []

    def _proto(self):
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        proto = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(self.config_file.read_text(encoding="utf-8"), proto)
        except text_format.ParseError as err:
            raise ConfigError(f"'{self.config_file}' is not a model config: {err}",
                              fix="fix the file (tensorflow_serving/config/model_server_config.proto)") from None
        return proto

    def entry(self, proto=None):
        proto = proto or self._proto()
        for entry in proto.model_config_list.config:
            if entry.name == self.model:
                return entry
        raise ConfigError(f"'{self.config_file}' has no model named {self.model!r}", fix="set model to a served name")

    @property
    def base_path(self) -> Path:
        return Path(self.entry().base_path)

    def labels(self) -> dict[str, int]:
        return dict(self.entry().version_labels)

    def apply(self, action: str, versions: list[int], labels: dict[str, int], percent: float = 0.0) -> None:
        """Writes the routing rule and the config (specific versions + labels), then reloads the server."""
        import grpc
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

        from moatkit.serving.client import open_channel

        routing = {"default_label": STABLE, "canary_label": CANARY, "canary_percent": percent}
        proto = self._proto()
        entry = self.entry(proto)
        entry.model_version_policy.specific.Clear()
        entry.model_version_policy.specific.versions.extend(sorted(versions))
        entry.version_labels.clear()
        entry.version_labels.update(labels)
        routing_path = Path(entry.base_path) / ROUTING_FILE
        before = {path: path.read_text(encoding="utf-8") if path.is_file() else None
                  for path in (routing_path, self.config_file)}
        _write_atomic(routing_path, json.dumps(routing))
        _write_atomic(self.config_file, text_format.MessageToString(proto))
        try:
            with open_channel(self.grpc) as channel:
                response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                    model_management_pb2.ReloadConfigRequest(config=proto), timeout=600)
            problem = response.status.error_message if response.status.error_code != 0 else None
        except grpc.RpcError as err:
            problem = f"{err.code().name}: {err.details()}"
        if problem is not None:
            for path, text in before.items():  # as it was: a later poll or restart must not apply a refused config
                if text is None:
                    path.unlink(missing_ok=True)
                else:
                    _write_atomic(path, text)
            raise ModelError(f"the server at {self.grpc} did not take the config for {action}: {problem}",
                             fix=f"check that it runs with --model_config_file={self.config_file} (set grpc)")
        self.transitions.append({"time": time.time(), "action": action, "versions": sorted(versions),
                                 "labels": labels, "canary_percent": percent})
        self.log(f"{action}: versions {sorted(versions)}, labels {labels}"
                 + (f", {percent}% of unversioned requests to the canary" if percent else ""))

    def wait_available(self, version: int, timeout: float = 300.0) -> None:
        import grpc

        from moatkit.serving.client import grpc_model_status

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = {s["version"]: s for s in grpc_model_status(self.grpc, self.model)}
            except grpc.RpcError as err:
                raise ModelError(f"the server at {self.grpc} did not answer GetModelStatus: {err.code().name}",
                                 fix="check that it is running (set grpc)") from None
            state = states.get(version)
            if state and state["state"] == "AVAILABLE":
                return
            if state and state["error_code"] != "OK":
                raise ModelError(f"version {version} failed to load: {state['error_message']}",
                                 fix="the candidate stays out of service; check the server log")
            time.sleep(0.5)
        raise ModelError(f"version {version} was not AVAILABLE after {timeout:.0f}s", fix="check the server log")

    def check_stable(self, current: int) -> None:
        stable = self.labels().get(STABLE)
        if stable not in (None, current):
            raise ConfigError(f"the server's stable label is on version {stable}, not on version {current} that this "
                              "loop improves", fix="start a new run (a new run_dir) from the version now served")

    def pin(self, current: int) -> None:
        self.apply("pin current", [current], {STABLE: current, CANARY: current})

    def canary(self, current: int, candidate: int, percent: float) -> None:
        self.apply("load candidate", [current, candidate], {STABLE: current, CANARY: current})
        self.wait_available(candidate)
        self.apply("canary", [current, candidate], {STABLE: current, CANARY: candidate}, percent)

    def promote(self, current: int, candidate: int) -> None:
        self.apply("promote", [current, candidate], {STABLE: candidate, CANARY: candidate})
        self.apply("unload previous", [candidate], {STABLE: candidate, CANARY: candidate})

    def rollback(self, current: int, candidate: int) -> None:
        self.apply("roll back", [current, candidate], {STABLE: current, CANARY: current})
        self.apply("unload candidate", [current], {STABLE: current, CANARY: current})
        rejected = self.base_path / REJECTED_DIR
        rejected.mkdir(exist_ok=True)
        source = self.base_path / str(candidate)
        if source.is_dir():
            shutil.rmtree(rejected / str(candidate), ignore_errors=True)
            source.rename(rejected / str(candidate))


def prune_versions(base: Path, keep: int, served: set[int]) -> list[int]:
    """Deletes all but the `keep` newest version dirs (never a served one); returns what it deleted."""
    versions = sorted((int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
    doomed = [v for v in versions[keep:] if v not in served]
    for version in doomed:
        shutil.rmtree(base / str(version))
    return doomed
