"""Steps 4-5 of `moat iterate`: canary, live gate, promote or roll back, through the server's own interfaces.

Transitions are model config changes, written to the server's --model_config_file (atomically, so a poll never
reads half a file) and applied at once with ModelService/HandleReloadConfigRequest, which the real
tensorflow_model_server has too. Order matters so that no request fails and each is answered by one version:
- canary: load the candidate beside the current version (unversioned requests held on `stable`, which TF Serving
  would send to the newest version), wait until it is AVAILABLE, then add
  the `canary` label and the routing file (serving/model_manager.py ROUTING_FILE) that sends canary_percent of
  unversioned requests to it; TF Serving would only assign a label to a loaded version, hence two reloads;
- promote: `stable` moves to the candidate (the routing file still sends unversioned requests to `stable`), then
  the routing file goes and the old version is unloaded;
- roll back: canary share 0 and labels back to the current version, then the candidate is unloaded and its dir
  moved to <base>/rejected/ so no server, restarted or not, picks it up again (its number is never reused).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from moatkit.data.core.errors import ConfigError, ModelError
from moatkit.serving.model_manager import ROUTING_FILE

STABLE, CANARY = "stable", "canary"


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def next_free_version(base: Path) -> int:
    """One more than any version ever written under base, rejected ones included."""
    numbers = [int(p.name) for folder in (base, base / "rejected") if folder.is_dir()
               for p in folder.iterdir() if p.name.isdigit()]
    return max(numbers, default=0) + 1


def _digest(version_dir: Path) -> str:
    return hashlib.sha256((version_dir / "saved_model.pb").read_bytes()).hexdigest()


def publish_version(candidate_dir: Path, base: Path, version: int) -> Path:
    """Copies the gated candidate into the model repository as <base>/<version>, atomically. The same candidate
    copied before is reused; another model under that number is an error (a version is never written twice)."""
    final = base / str(version)
    if final.exists():
        if (final / "saved_model.pb").is_file() and _digest(final) == _digest(candidate_dir):
            return final
        raise ModelError(f"version {version} already exists at '{final}' and is not this loop's candidate",
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
        text_format.Parse(self.config_file.read_text(encoding="utf-8"), proto)
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

    def apply(self, action: str, versions: list[int], labels: dict[str, int], routing: dict | None) -> None:
        """Writes the routing rule and the config (specific versions + labels), then reloads the server."""
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

        from moatkit.serving.client import open_channel

        proto = self._proto()
        entry = self.entry(proto)
        entry.model_version_policy.specific.Clear()
        entry.model_version_policy.specific.versions.extend(sorted(versions))
        entry.version_labels.clear()
        entry.version_labels.update(labels)
        routing_path = Path(entry.base_path) / ROUTING_FILE
        if routing is None:
            routing_path.unlink(missing_ok=True)
        else:
            _write_atomic(routing_path, json.dumps(routing))
        _write_atomic(self.config_file, text_format.MessageToString(proto))
        request = model_management_pb2.ReloadConfigRequest(config=proto)
        with open_channel(self.grpc) as channel:
            response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=600)
        if response.status.error_code != 0:
            raise ModelError(f"the server refused the config for {action}: {response.status.error_message}",
                             fix=f"check '{self.config_file}' and the server log")
        self.transitions.append({"time": time.time(), "action": action, "versions": sorted(versions),
                                 "labels": labels, "routing": routing})
        self.log(f"{action}: versions {sorted(versions)}, labels {labels}"
                 + (f", {routing['canary_percent']}% of unversioned requests to the canary" if routing else ""))

    def wait_available(self, version: int, timeout: float = 300.0) -> None:
        from moatkit.serving.client import grpc_model_status

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {s["version"]: s for s in grpc_model_status(self.grpc, self.model)}
            state = states.get(version)
            if state and state["state"] == "AVAILABLE":
                return
            if state and state["error_code"] != "OK":
                raise ModelError(f"version {version} failed to load: {state['error_message']}",
                                 fix="the candidate stays out of service; check the server log")
            time.sleep(0.5)
        raise ModelError(f"version {version} was not AVAILABLE after {timeout:.0f}s", fix="check the server log")

    def canary(self, current: int, candidate: int, percent: float) -> None:
        hold = {"default_label": STABLE, "canary_label": CANARY, "canary_percent": 0}  # unversioned: stable
        self.apply("load candidate", [current, candidate], {STABLE: current}, hold)
        self.wait_available(candidate)
        self.apply("canary", [current, candidate], {STABLE: current, CANARY: candidate},
                   {"default_label": STABLE, "canary_label": CANARY, "canary_percent": percent})

    def promote(self, current: int, candidate: int) -> None:
        self.apply("promote", [current, candidate], {STABLE: candidate},
                   {"default_label": STABLE, "canary_label": CANARY, "canary_percent": 0})
        self.apply("unload previous", [candidate], {STABLE: candidate}, None)

    def rollback(self, current: int, candidate: int) -> None:
        self.apply("roll back", [current, candidate], {STABLE: current},
                   {"default_label": STABLE, "canary_label": CANARY, "canary_percent": 0})
        self.apply("unload candidate", [current], {STABLE: current}, None)
        rejected = self.base_path / "rejected"
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
