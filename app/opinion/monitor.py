"""The monitor: scored items → entity mentions → timelines, the two spike detectors, alerts with evidence.

`process(items)` scores a batch, matches the watch-list and updates every entity; items that mention no watched
entity count towards the market-wide mood. Every item is written to scored.jsonl and every alert to alerts.jsonl
(appended, flushed), so what the dashboard shows can be audited. `on_batch` callbacks see each batch's rows
(metrics), `on_alert` callbacks (Prometheus, webhook) each alert once.
"""
from __future__ import annotations

import json
import math
import threading
from collections import Counter, deque
from datetime import datetime, timezone
from pathlib import Path

from moatkit.app.opinion.config import DetectConfig
from moatkit.app.opinion.detect import ShareCusum, VolumeTest
from moatkit.app.opinion.scorer import SENTIMENTS, sentiments
from moatkit.app.opinion.stream import Item

MARKET = "(market)"
SCORED_FILE, ALERTS_FILE = "scored.jsonl", "alerts.jsonl"


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")


class _Entity:
    def __init__(self, config: DetectConfig, n_entities: int, prior_share: float):
        rate = config.false_alarms_per_10k / 10_000
        self.cusum = ShareCusum(shift=config.shift, arl=int(math.ceil(1 / rate)), prior_share=prior_share,
                                prior_strength=config.prior_strength, burn_in=config.burn_in,
                                baseline_lag=config.baseline_lag, cooldown=config.cooldown)
        # The volume test's budget per window: the same rate per mention, spread over the entities by Bonferroni.
        self.volume = VolumeTest(alpha=min(0.5, rate * 100), n_entities=n_entities,
                                 min_windows=config.volume_min_windows, min_count=config.volume_min_count)
        self.recent: deque = deque(maxlen=max(400, config.baseline_lag * 4))  # (mention no, row) for evidence
        self.buckets: dict[int, Counter] = {}
        self.totals: Counter = Counter()


class OpinionMonitor:
    def __init__(self, watchlist, scorer, config: DetectConfig, *, out_dir: str | Path | None = None,
                 decision: dict | None = None, prior_share: float = 0.2, on_alert=(), on_batch=()):
        config.validate()
        self.watchlist, self.scorer, self.config = watchlist, scorer, config
        self.decision = dict(decision or {})  # scorer.sentiments' keywords, fitted by `moat opinion adapt`
        self.entities = {name: _Entity(config, len(watchlist.names), prior_share) for name in watchlist.names}
        self.market = _Entity(config, 1, prior_share)
        self.alerts: deque = deque(maxlen=config.max_alerts_kept)  # all of them are in alerts.jsonl
        self.latest: deque = deque(maxlen=config.latest)
        self.on_alert, self.on_batch = list(on_alert), list(on_batch)
        self.counts: Counter = Counter({key: 0 for key in ("items", "mentions", "unmatched", "alerts",
                                                           *(f"sentiment_{s}" for s in SENTIMENTS))})
        self.open_window: int | None = None
        self.lock = threading.Lock()  # the dashboard reads while the stream thread writes
        self.out = Path(out_dir) if out_dir else None
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            self._scored = open(self.out / SCORED_FILE, "a", encoding="utf-8")
            self._alerts = open(self.out / ALERTS_FILE, "a", encoding="utf-8")

    def process(self, items: list[Item]) -> list[dict]:
        if not items:
            return []
        probabilities = self.scorer.probabilities([i.text for i in items])
        labels = sentiments(probabilities, self.scorer.labels, **self.decision)
        negative_col = self.scorer.labels.index("negative")
        raised, rows = [], []
        with self.lock:
            for item, probs, label in zip(items, probabilities, labels):
                raised += self._advance(item.time)
                row = {"id": item.id, "time": iso(item.time), "source": item.source, "text": item.text,
                       "sentiment": SENTIMENTS[label], "negative": round(float(probs[negative_col]), 4),
                       "provenance": item.provenance, "entities": self.watchlist.match(item.text)}
                self.counts["items"] += 1
                self.counts[f"sentiment_{row['sentiment']}"] += 1
                targets = [(name, self.entities[name]) for name in row["entities"]] or [(MARKET, self.market)]
                self.counts["mentions" if row["entities"] else "unmatched"] += len(row["entities"]) or 1
                for name, state in targets:
                    raised += self._mention(name, state, item, row)
                if row["entities"] and row["sentiment"] == "negative":
                    self.latest.appendleft(row)
                rows.append(row)
                if self.out:
                    self._scored.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._shrink_towards_market()
            if self.out:
                self._scored.flush()
        for callback in self.on_batch:
            callback(rows)
        for alert in raised:
            for callback in self.on_alert:
                callback(alert)
        return raised

    def _shrink_towards_market(self) -> None:
        """An entity's base share starts at the market's: the lagged negative share of the items that mention no
        watched entity, so no entity's burst moves another's reference."""
        for state in self.entities.values():
            state.cusum.prior_share = self.market.cusum.p0

    def _mention(self, name: str, state: _Entity, item: Item, row: dict) -> list[dict]:
        bucket = int(item.time // self.config.window_s)
        counts = state.buckets.setdefault(bucket, Counter())
        counts["mentions"] += 1
        counts[row["sentiment"]] += 1
        state.totals["mentions"] += 1
        state.totals[row["sentiment"]] += 1
        state.recent.append((state.cusum.mentions + 1, row))
        alarm = state.cusum.update(row["sentiment"] == "negative")
        if alarm is None or name == MARKET:
            return []
        run = set(alarm.pop("run"))
        in_run = [r for n, r in state.recent if n in run]
        negatives = [r for r in in_run if r["sentiment"] == "negative"]
        return [self._alert(name, "negative-share", item.time, {
            **alarm, "mentions_in_run": len(in_run), "negatives_in_run": len(negatives),
            "share_in_run": round(len(negatives) / max(1, len(in_run)), 4),
            "run_start": in_run[0]["time"] if in_run else row["time"]}, negatives)]

    def _advance(self, now: float) -> list[dict]:
        """Closes every window the stream has passed; the volume test judges each entity's negatives in it."""
        window = int(now // self.config.window_s)
        if self.open_window is None or window <= self.open_window:
            self.open_window = window if self.open_window is None else self.open_window
            return []
        raised = []
        for closed in range(self.open_window, window):
            for name, state in self.entities.items():
                negatives = state.buckets.get(closed, Counter())["negative"]
                alarm = state.volume.close_window(negatives)
                if alarm is not None:
                    evidence = [r for _, r in state.recent if r["sentiment"] == "negative"
                                and int(datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
                                        // self.config.window_s) == closed]
                    raised.append(self._alert(name, "negative-volume", (closed + 1) * self.config.window_s,
                                              {**alarm, "window_start": iso(closed * self.config.window_s)}, evidence))
            if window - closed > 10_000:  # a jump of years: the empty windows in between say nothing more
                break
        self.open_window = window
        return raised

    def _alert(self, name: str, detector: str, when: float, details: dict, negatives: list[dict]) -> dict:
        top = sorted(negatives, key=lambda r: -r["negative"])[:self.config.evidence]
        alert = {"id": f"alert-{self.counts['alerts'] + 1}", "entity": name, "detector": detector, "time": iso(when),
                 **details, "evidence": [{k: r[k] for k in ("id", "time", "source", "text", "negative", "provenance")}
                                         for r in top]}
        self.alerts.append(alert)
        self.counts["alerts"] += 1
        (self.entities.get(name) or self.market).totals["alerts"] += 1
        if self.out:
            self._alerts.write(json.dumps(alert, ensure_ascii=False) + "\n")
            self._alerts.flush()
        return alert

    # === what the dashboard and the report read ===

    def timeline(self) -> dict:
        with self.lock:
            buckets = sorted({b for s in [*self.entities.values(), self.market] for b in s.buckets})
            buckets = buckets[-self.config.timeline_buckets:]
            series = {}
            for name, state in [*self.entities.items(), (MARKET, self.market)]:
                series[name] = {key: [state.buckets.get(b, Counter())[key] for b in buckets]
                                for key in ("mentions", *SENTIMENTS)}
            return {"window_s": self.config.window_s, "buckets": [iso(b * self.config.window_s) for b in buckets],
                    "series": series}

    def summary(self) -> dict:
        with self.lock:
            rows = {}
            for name, state in [*self.entities.items(), (MARKET, self.market)]:
                mentions = state.totals["mentions"]
                rows[name] = {"mentions": mentions, "negative": state.totals["negative"],
                              "negative_share": round(state.totals["negative"] / mentions, 4) if mentions else None,
                              "base_share": round(state.cusum.p0, 4),
                              "alerts": state.totals["alerts"]}
            return {"counts": dict(self.counts), "entities": rows}

    def latest_negative(self, *, entity: str | None = None, limit: int = 50) -> list[dict]:
        with self.lock:
            rows = [r for r in self.latest if entity is None or entity in r["entities"]]
            return rows[:limit]

    def close(self) -> None:
        if self.out:
            self._scored.close()
            self._alerts.close()

