"""`moat iterate` settings: one dataclass for the whole loop (select → merge → train → gate → canary → promote)."""
from __future__ import annotations

import dataclasses
from typing import Literal

from moatkit.data.core.errors import ConfigError


@dataclasses.dataclass
class IterateConfig:
    run_dir: str = ""  # every step's artifact, state.json and the loop's report (default: runs/iterate/MODEL-vN)
    model: str = "sentiment"  # the served model name
    repo: str = "artifacts/models"  # the model repository: versions live in <repo>/<model>/<version>
    version: int | None = None  # the version to improve (default: the `stable` label's, else the newest)
    logs: list[str] = dataclasses.field(default_factory=lambda: ["logs/sentiment"])  # the server's request logs
    # 1. select
    budget: int = 300  # logged texts to annotate
    strategy: Literal["loop", "random"] = "loop"  # loop: uncertainty + drift + diversity; random: the baseline
    drift_weight: float = 1.0  # weight of the distance to the reference profile against uncertainty (ranks)
    diversity: int = 3  # k-means over the top diversity·budget candidates, one text per cluster (0: off)
    annotations: str | None = None  # the answered batch (CSV/JSONL: id, label); unset: stop after select
    # 2. train: warm start from the version's checkpoint on replayed old training data + the new labels
    base_model: str | None = None  # HF model dir of the version (default: recorded in its moat_source.json)
    train_data: str | None = None  # split dir of the old training data (default: recorded at fine-tuning)
    replay: int = 2000  # old training examples replayed beside the new labels (0: new labels only)
    new_repeats: int = 2  # each new label is seen this many times an epoch
    heldout_share: float = 0.2  # share of the new labels kept out of training for the dev split
    epochs: int = 2
    learning_rate: float = 3e-5
    max_length: int | None = None  # default: the version's
    batch_size: int = 32
    seed: int = 13
    candidate: str | None = None  # deploy this HF model dir instead of training one (a hand-made candidate)
    # 3. offline gate: slices are dataset dirs with text and label
    golden: dict[str, str] = dataclasses.field(default_factory=dict)  # slice -> dir (default: original = test)
    target_slice: str | None = None  # the slice that must improve by min_gain
    min_accuracy: dict[str, float] = dataclasses.field(default_factory=dict)  # value thresholds per slice
    max_drop: float = 0.005  # no slice worse than the current version by more than this
    min_gain: float = 0.01  # the target slice better by at least this
    max_latency_ms: float = 200.0  # p50 of one single-text request, in-process
    max_megabytes: float = 500.0
    skip_offline_gate: bool = False  # deploy even when refused (an operator's override; the live gate still runs)
    deploy: bool = True  # false: stop after the offline gate (compare candidates without touching the server)
    # 4./5. canary, live gate, promote or roll back
    grpc: str = "127.0.0.1:8500"  # the server's gRPC address (ModelService reloads, status)
    rest: str = "127.0.0.1:8501"  # for latency probes
    model_config_file: str | None = None  # the server's --model_config_file, rewritten at every transition
    canary_percent: float = 10.0  # share of unversioned requests the canary answers (moat_routing.json)
    live_requests: int = 200  # canary answers the live gate waits for
    live_timeout_s: float = 300.0
    min_agreement: float = 0.7  # canary answers that the stable version gives too, on the same texts
    max_confidence_drop: float = 0.15  # canary mean confidence may be this much lower than stable's
    max_class_shift: float = 0.3  # largest change of a predicted-class share, canary vs stable
    max_latency_ratio: float = 2.0  # canary p50 / stable p50 over REST probes
    probes: int = 30  # REST probes per label for the latency ratio
    keep_versions: int = 3  # version dirs kept in the repository after a promotion

    def validate(self):
        if self.budget < 2:
            raise ConfigError(f"config key 'budget' is {self.budget}", fix="annotate at least 2 texts, e.g. 300")
        if self.strategy not in ("loop", "random"):
            raise ConfigError(f"config key 'strategy' is {self.strategy!r}", fix="use loop or random")
        if not 0 < self.canary_percent <= 50:
            raise ConfigError(f"config key 'canary_percent' is {self.canary_percent}",
                              fix="send the canary a minority of traffic, e.g. 10")
        if not 0 <= self.heldout_share < 0.9:
            raise ConfigError(f"config key 'heldout_share' is {self.heldout_share}", fix="e.g. 0.2")
        if self.keep_versions < 2:
            raise ConfigError(f"config key 'keep_versions' is {self.keep_versions}",
                              fix="keep at least the promoted version and the one before (rollback)")
        for name in ("replay", "diversity", "drift_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key '{name}' must be >= 0, got {getattr(self, name)}")
        for name in ("epochs", "learning_rate", "batch_size", "live_requests", "new_repeats", "probes",
                     "live_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config key '{name}' must be > 0, got {getattr(self, name)}")
        if not self.logs:
            raise ConfigError("config key 'logs' is empty", fix="name the server's log prefix, e.g. --set logs=[logs/x]")
