"""Where alerts go besides alerts.jsonl: Prometheus metrics (rules in serving/deploy/prometheus/
moat-opinion-rules.yml raise them in Alertmanager) and a webhook that receives each alert as JSON.

The webhook is posted from its own thread with retries, so a slow or dead receiver never holds up the stream;
deliveries and failures are counted (metrics and `status()`).
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter, Gauge

logger = logging.getLogger("moat.opinion")
PREFIX = "moat_opinion_"


class OpinionMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.items = Counter(f"{PREFIX}items", "Stream items scored", registry=r)
        self.mentions = Counter(f"{PREFIX}mentions", "Mentions of a watched entity", ["entity"], registry=r)
        self.negative = Counter(f"{PREFIX}negative_mentions", "Negative mentions of a watched entity", ["entity"],
                                registry=r)
        self.alerts = Counter(f"{PREFIX}alerts", "Spike alerts raised", ["entity", "detector"], registry=r)
        self.last_alert = Gauge(f"{PREFIX}last_alert_timestamp_seconds", "Stream time of the entity's last alert",
                                ["entity", "detector"], registry=r)
        self.base_share = Gauge(f"{PREFIX}base_negative_share", "The entity's reference negative share (CUSUM p0)",
                                ["entity"], registry=r)
        self.webhook_failures = Counter(f"{PREFIX}webhook_failures", "Alerts the webhook did not take", registry=r)

    def prepare(self, entities: list[str]) -> None:
        """Every entity's series at 0 from the start, so a rule's increase() sees the first alert too."""
        for entity in entities:
            self.mentions.labels(entity)
            self.negative.labels(entity)
            for detector in ("negative-share", "negative-volume"):
                self.alerts.labels(entity, detector)

    def observe(self, rows: list[dict]) -> None:
        """After a batch: its rows (as in scored.jsonl)."""
        self.items.inc(len(rows))
        for row in rows:
            for entity in row["entities"]:
                self.mentions.labels(entity).inc()
                if row["sentiment"] == "negative":
                    self.negative.labels(entity).inc()

    def base_shares(self, monitor) -> None:
        for name, state in monitor.entities.items():
            self.base_share.labels(name).set(state.cusum.p0)

    def alert(self, alert: dict) -> None:
        self.alerts.labels(alert["entity"], alert["detector"]).inc()
        from moatkit.app.opinion.stream import parse_time
        self.last_alert.labels(alert["entity"], alert["detector"]).set(parse_time(alert["time"]) or 0.0)


class Webhook:
    """POSTs each alert as a JSON body to `url`: `attempts` tries, doubling waits, `timeout_s` each."""

    def __init__(self, url: str, *, attempts: int = 3, timeout_s: float = 5.0, backoff_s: float = 0.5,
                 on_failure=None):
        self.url, self.attempts, self.timeout_s, self.backoff_s = url, attempts, timeout_s, backoff_s
        self.on_failure = on_failure
        self.delivered = self.failed = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="opinion-webhook", daemon=True)
        self._thread.start()

    def __call__(self, alert: dict) -> None:
        self._queue.put(alert)

    def _post(self, alert: dict) -> None:
        body = json.dumps(alert, ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()

    def _run(self) -> None:
        while (alert := self._queue.get()) is not None:
            for attempt in range(self.attempts):
                try:
                    self._post(alert)
                    self.delivered += 1
                    break
                except (urllib.error.URLError, OSError, ValueError) as err:
                    if attempt + 1 == self.attempts:
                        self.failed += 1
                        logger.warning("webhook %s did not take alert %s: %s", self.url, alert["id"], err)
                        if self.on_failure is not None:
                            self.on_failure()
                    else:
                        time.sleep(self.backoff_s * 2 ** attempt)
            self._queue.task_done()

    def close(self, timeout: float = 10.0) -> None:
        """Delivers what is queued (up to `timeout`), then stops the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def status(self) -> dict:
        return {"url": self.url, "delivered": self.delivered, "failed": self.failed}
