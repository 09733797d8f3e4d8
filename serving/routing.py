"""Canary routing, moat-model-server's one extension to TF Serving's behaviour (off unless its file exists).

`<base_path>/moat_routing.json` ({"default_label": "stable", "canary_label": "canary", "canary_percent": 10})
routes inference requests that name neither a version nor a label to the default label's version, and exactly that
percentage of them (every n-th, not at random) to the canary label's version; a label whose version is not
AVAILABLE falls back to the default label's, then to the newest. TF Serving would send such requests to the newest
loaded version; requests that name a version or label are routed as TF Serving routes them. `moat iterate` writes
the file for a canary; the real binary ignores it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

ROUTING_FILE = "moat_routing.json"


@dataclass
class Routing:
    """The rule of a model's ROUTING_FILE."""

    default_label: str
    canary_label: str = ""
    canary_percent: float = 0.0
    mtime: float = 0.0
    requests: int = 0

    @classmethod
    def from_file(cls, path: str, mtime: float) -> "Routing":
        with open(path, encoding="utf-8") as handle:
            rule = json.load(handle)
        if not isinstance(rule, dict):
            raise ValueError("the rule must be a JSON object")
        percent = float(rule.get("canary_percent", 0.0))
        if not 0 <= percent <= 100:
            raise ValueError(f"canary_percent {percent} is outside 0..100")
        return cls(default_label=str(rule["default_label"]), canary_label=str(rule.get("canary_label", "")),
                   canary_percent=percent, mtime=mtime)

    def pick(self) -> str:
        """The label for the next unversioned request: the n-th goes to the canary when floor(n·p) steps up."""
        self.requests += 1
        share = self.canary_percent / 100.0
        if self.canary_label and int(self.requests * share) > int((self.requests - 1) * share):
            return self.canary_label
        return self.default_label
