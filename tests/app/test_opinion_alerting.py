"""The opinion alert sinks: Prometheus series and the shipped rules (promtool), the webhook's retries."""
import http.server
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from moatkit.app.opinion.alerting import OpinionMetrics, Webhook

RULES_DIR = Path(__file__).resolve().parents[2] / "serving" / "deploy" / "prometheus"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed: `make prometheus` (as root)")
def test_promtool_checks_the_opinion_rules_and_runs_their_tests():
    def promtool(*args):
        result = subprocess.run(["promtool", *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert "SUCCESS: 3 rules found" in promtool("check", "rules", "moat-opinion-rules.yml")
    assert "SUCCESS" in promtool("test", "rules", "moat-opinion-rules.test.yml")


def test_metrics_start_every_entity_at_zero_and_count_batches_and_alerts():
    metrics = OpinionMetrics()
    metrics.prepare(["Yukos", "Gazprom"])
    text = generate_latest(metrics.registry).decode()
    assert 'moat_opinion_alerts_total{detector="negative-share",entity="Gazprom"} 0.0' in text
    metrics.observe([{"entities": ["Yukos"], "sentiment": "negative"}, {"entities": [], "sentiment": "neutral"},
                     {"entities": ["Yukos", "Gazprom"], "sentiment": "positive"}])
    metrics.alert({"entity": "Yukos", "detector": "negative-volume", "time": "2026-01-05T10:00:00Z"})
    text = generate_latest(metrics.registry).decode()
    assert "moat_opinion_items_total 3.0" in text
    assert 'moat_opinion_mentions_total{entity="Yukos"} 2.0' in text
    assert 'moat_opinion_negative_mentions_total{entity="Yukos"} 1.0' in text
    assert 'moat_opinion_alerts_total{detector="negative-volume",entity="Yukos"} 1.0' in text
    assert 'moat_opinion_last_alert_timestamp_seconds{detector="negative-volume",entity="Yukos"} 1.7676072e+09' in text


def test_webhook_retries_then_counts_a_failure_and_never_blocks_the_caller():
    calls = []

    class FlakyReceiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            calls.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(503 if len(calls) == 1 else 200)  # the first try fails, the retry lands
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), FlakyReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    failures = []
    hook = Webhook(f"http://127.0.0.1:{server.server_port}/", backoff_s=0.01, on_failure=lambda: failures.append(1))
    started = time.perf_counter()
    hook({"id": "alert-1", "entity": "Yukos"})
    assert time.perf_counter() - started < 0.05  # queued, not posted in the caller's thread
    hook.close()
    server.shutdown()
    assert hook.status()["delivered"] == 1 and len(calls) == 2 and failures == []
    dead = Webhook("http://127.0.0.1:9/", attempts=2, backoff_s=0.01, timeout_s=1, on_failure=lambda: failures.append(1))
    dead({"id": "alert-2", "entity": "Yukos"})
    dead.close()
    assert dead.status() == {"url": "http://127.0.0.1:9/", "delivered": 0, "failed": 1} and failures == [1]
