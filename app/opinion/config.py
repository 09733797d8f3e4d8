"""`moat opinion` settings: the finance sentiment model (adapt), the stream and the watch-list (run), the spike
detectors, the alerts and the dashboard (serve)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from moatkit.data.core.errors import ConfigError

DEFAULT_WATCHLIST = str(Path(__file__).parent / "watchlist.yaml")


@dataclasses.dataclass
class AdaptConfig:
    """General model (`moat finetune` on MR) and the finance model (weak labels on business news → `moat finetune`)."""
    unlabelled: list[str] = dataclasses.field(default_factory=lambda: ["bbc-business"])  # catalog names or dataset dirs
    gold: str = "nyt"  # catalog name or dataset dir with human labels: its dev split fits, its test split scores
    gold_dev: int = 300  # gold records that fit the label model (2/3) and the decision thresholds (the rest is test)
    neutral_score: float = 0.5  # a gold record with a −4..+4 mean score: |score| < this is neutral
    general_task: str = "mr-polarity"
    model: str = "minilm-l6"
    layers: int | None = None  # keep only the first N encoder layers (faster scoring; 3 of 6 measured −8 macro-F1)
    epochs: int = 2
    general_epochs: int = 1
    learning_rate: float = 1e-4
    batch_size: int = 32
    max_length: int = 64
    max_unlabelled: int | None = None  # budget knob for tests
    max_general_examples: int | None = None  # budget knob for tests
    max_gold_test: int | None = None  # budget knob for tests: score on this many gold test records
    general_name: str = "sentiment-general"
    name: str = "sentiment-finance"
    seed: int = 13


@dataclasses.dataclass
class DetectConfig:
    window_s: float = 3600.0  # timeline buckets and the volume test's windows
    shift: float = 3.0  # the negative-share CUSUM looks for this multiple of the entity's base share
    false_alarms_per_10k: float = 1.0  # budget per 10,000 mentions, per detector, across all entities
    burn_in: int = 20  # mentions of an entity before it can alarm
    prior_strength: float = 10.0  # pseudo-mentions at the market-wide share in an entity's base share
    # a mention joins the entity's base share this many mentions later (100 measured too slow: an entity with 60
    # mentions kept the market's share as its own and missed 3× bursts)
    baseline_lag: int = 30
    cooldown: int = 50  # mentions after an alarm before the entity's CUSUM may alarm again
    volume_min_windows: int = 6  # windows seen before the volume test speaks
    volume_min_count: int = 5  # negative mentions a window needs to alarm
    evidence: int = 5  # top negative texts kept with an alert
    latest: int = 200  # latest negative items kept for the dashboard
    timeline_buckets: int = 500  # the dashboard's timeline shows the newest buckets
    max_alerts_kept: int = 1000  # in memory for the dashboard; alerts.jsonl keeps every one

    def validate(self):
        if self.shift <= 1:
            raise ConfigError(f"detect.shift={self.shift} must be > 1", fix="e.g. --set detect.shift=3")
        if not 0 < self.false_alarms_per_10k < 10_000:
            raise ConfigError(f"detect.false_alarms_per_10k={self.false_alarms_per_10k} is not a rate",
                              fix="e.g. --set detect.false_alarms_per_10k=1")
        if self.window_s <= 0:
            raise ConfigError(f"detect.window_s={self.window_s} must be > 0", fix="e.g. --set detect.window_s=3600")


@dataclasses.dataclass
class StreamConfig:
    sources: list[str] = dataclasses.field(default_factory=lambda: ["catalog:bbc-business"])  # files, dirs,
    #   catalog:NAME (replayed on a clock) or tail:PATH (followed until stopped)
    text_field: str = "text"
    time_field: str = "time"
    source_field: str = "source"
    items_per_minute: float = 10.0  # replay clock
    start: str = "2026-01-05T00:00:00Z"  # replay start time
    limit: int | None = None  # replayed items
    seed: int = 13
    batch_size: int = 64  # items scored together
    idle_flush_s: float = 1.0  # a tailed stream scores what it has after this long without new lines


@dataclasses.dataclass
class OpinionConfig:
    watchlist: str = DEFAULT_WATCHLIST
    bare_tickers: bool = False
    # an alias matching more of 10,000 lines of movie dialogue is a common word: an error ("said" 0.84 %, "money"
    # 0.56 %, "next" 0.37 %; company names ≤ 0.03 %)
    alias_max_share: float = 0.003
    stream: StreamConfig = dataclasses.field(default_factory=StreamConfig)
    detect: DetectConfig = dataclasses.field(default_factory=DetectConfig)
    adapt: AdaptConfig = dataclasses.field(default_factory=AdaptConfig)
    model: str | None = None  # a sentiment version dir; default: the newest adapt.name version in repo
    scoring: Literal["served", "local"] = "served"  # served: over gRPC (batching on); local: the SavedModel in-process
    model_server: str | None = None  # host:port of a running server's gRPC; default: start moat-model-server
    out: str = "artifacts/opinion"
    repo: str = "artifacts/models"
    webhook: str | None = None  # POST every alert as JSON here
    host: str = "127.0.0.1"
    port: int = 8090

    def validate(self):
        self.detect.validate()
        if not 0 < self.alias_max_share <= 1:
            raise ConfigError(f"alias_max_share={self.alias_max_share} must be in (0, 1]", fix="e.g. 0.2")
        if self.stream.items_per_minute <= 0 or self.stream.batch_size <= 0:
            raise ConfigError("stream.items_per_minute and stream.batch_size must be > 0", fix="e.g. 10 and 64")
