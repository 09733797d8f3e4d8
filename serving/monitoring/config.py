"""`moat monitor` settings (one dataclass for its three actions: profile, report, follow)."""
from __future__ import annotations

import dataclasses

from moatkit.serving.errors import ServingConfigError


@dataclasses.dataclass
class MonitorConfig:
    model: str = "sentiment"  # the served model name (its logs and its <repo>/<model>/<version> dirs)
    repo: str = "artifacts/models"  # the model repository; each version's profile is read from there
    logs: list[str] = dataclasses.field(default_factory=lambda: ["logs/sentiment"])  # files, dirs, globs or prefixes
    feedback: str | None = None  # .jsonl/.csv/dataset dir of {text, label}: realised accuracy
    out: str = "runs/monitor"  # report.json, report.html, TensorBoard events
    window: int = 200  # logged texts per window
    step: int = 50  # a window is evaluated every `step` new texts
    alpha: float = 0.01  # false-alarm probability per evaluated window (Bonferroni over the detectors)
    confirm: int = 1  # consecutive failing windows an alarm needs
    permutations: int = 1000  # MMD permutation test (raised to 2·tests/alpha when lower, so it can reach alpha)
    embedding_sample: float = 1.0  # share of logged texts embedded for the MMD test (lower: cheaper follow)
    embedding_drift: bool = True
    ood_texts: int = 10  # the most out-of-distribution texts listed in the report
    seed: int = 0
    # follow
    metrics_port: int = 9464  # Prometheus gauges at http://127.0.0.1:PORT/metrics; 0 = off
    poll_seconds: float = 2.0
    max_seconds: float = 0.0  # stop following after this long (0 = until interrupted)
    nice: int = 10  # follow runs below the server's CPU priority: under full load serving keeps the cores and
    # the monitor falls behind, catching up when traffic eases (os.nice; 0 = same priority)
    # profile: which version, and the dev split (a moatkit dataset/split dir) it is computed on
    version: int | None = None  # default: the newest version under <repo>/<model>
    data: str | None = None  # default: the dev split recorded in the fine-tuned model's moat_task.json
    vocabulary_data: str | None = None  # texts for the OOV vocabulary (default: the train split beside `data`)
    text_field: str = "text"
    label_field: str = "label"

    def validate(self):
        if self.window < 20:
            raise ServingConfigError(f"config key 'window' is {self.window}", fix="use at least 20 texts per window")
        if not 1 <= self.step <= self.window:
            raise ServingConfigError(f"config key 'step' must be in 1..window ({self.window}), got {self.step}")
        if not 0 < self.alpha < 0.5:
            raise ServingConfigError(f"config key 'alpha' must be in (0, 0.5), got {self.alpha}")
        if not 0 < self.embedding_sample <= 1:
            raise ServingConfigError(f"config key 'embedding_sample' must be in (0, 1], got {self.embedding_sample}")
        if self.confirm < 1:
            raise ServingConfigError(f"config key 'confirm' must be >= 1, got {self.confirm}")
        if not self.logs:
            raise ServingConfigError("config key 'logs' is empty",
                                     fix="name the server's log files, e.g. --set logs=[/logs/sentiment]")
