"""The opinion dashboard's API over HTTP, in-process: a real OpinionMonitor (the exported MiniLM MR sentiment model of
tests/conftest.py `small_export`, a two-entity watch-list) fed 60 dated items over three hourly windows, behind
OpinionApi on serving/rest.py's server. tests/integration/test_opinion_browser.py runs the page end to end."""
import http.client
import json
import urllib.request

import pytest

from moatkit.app.opinion.config import DetectConfig
from moatkit.app.opinion.monitor import MARKET, OpinionMonitor
from moatkit.app.opinion.service import OpinionApi, make_dashboard_server
from moatkit.app.opinion.stream import Item, StreamReport, parse_time
from moatkit.app.opinion.watchlist import load_watchlist

START = parse_time("2026-01-05T00:00:00Z")
SCRIPT_TEXT = "Analysts say <script>alert(1)</script> Globex is awful, stupid and a total waste"
# (text, negative?) by what they name; windows 0 and 1 each hold ACME[:1] + ACME_GOOD, GLOBEX, BOTH and NEITHER
# (20 items, 4 negative); window 2 all of ACME instead (a burst: 8 negative Acme mentions in a row alarm).
ACME = ["Acme's results were a dreadful, embarrassing mess and investors are furious",
        "The Acme earnings call was a painful, dull, incompetent failure",
        "Acme is a terrible, awful, boring disaster of a company",
        "Acme shares collapsed after the fraud scandal, a pathetic failure",
        "Acme's new chief is a stupid, tedious, ugly disappointment",
        "Acme's guidance is a worthless, lifeless waste of time",
        "The Acme product launch was an awful, boring, embarrassing mess"]
ACME_GOOD = ["Acme: a wonderful, brilliant quarter with delightful results",
             "Acme delivered a superb, moving, beautifully executed turnaround",
             "Acme's new product is charming, smart and a joy to use",
             "Acme posted a wonderful, triumphant quarter",
             "Acme's chief gave a brilliant, inspiring and delightful speech",
             "Acme is a superb, charming company with a beautiful future"]
GLOBEX = [("Globex results were a stupid, tedious, ugly failure", True),
          ("Globex management is brilliant and inspiring", False),
          ("Globex posted a wonderful, triumphant quarter", False),
          ("Globex delivered a superb, delightful year", False),
          ("Globex's new chief is charming, smart and a joy to watch", False),
          ("Globex is a beautiful, moving success story", False)]
BOTH = [("The Acme and Globex merger is a terrible, stupid, pathetic failure", True)]
NEITHER = [("A wonderful, moving film about the markets", False), ("A brilliant, delightful budget speech", False),
           ("The new stadium is charming and a joy", False), ("A superb, inspiring and beautiful harbour", False),
           ("A delightful, smart and moving debate", False), ("A dull, lifeless, tedious mess of a budget", True)]


def stream_rows():
    """60 (text, entities, negative, time): 20 per hourly window, spread over the hour (interleaved); in the last
    window every Acme mention is negative and the negative Globex text is markup."""
    rows = []
    for window in range(3):
        acme = [(t, True) for t in ACME] if window == 2 else [(ACME[0], True)] + [(t, False) for t in ACME_GOOD]
        globex = [(SCRIPT_TEXT, True)] + GLOBEX[1:] if window == 2 else GLOBEX
        texts = ([(t, ["Acme"], n) for t, n in acme] + [(t, ["Globex"], n) for t, n in globex]
                 + [(t, ["Acme", "Globex"], n) for t, n in BOTH] + [(t, [], n) for t, n in NEITHER])
        order = [texts[i] for i in sorted(range(len(texts)), key=lambda i: (i * 7) % len(texts))]
        rows += [(t, e, n, START + window * 3600 + 150 * k) for k, (t, e, n) in enumerate(order)]
    return rows


def watchlist_file(tmp_path):
    path = tmp_path / "watch.yaml"
    path.write_text("- {entity: Acme, aliases: [Acme Corp], tickers: [ACME]}\n- {entity: Globex}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scorer(small_export):
    from moatkit.app.opinion.scorer import LocalScorer
    return LocalScorer(small_export["version_dir"])


@pytest.fixture(scope="module")
def fed(scorer, tmp_path_factory):
    """The monitor after the 60 items (in three process() batches), its stream report, and what went in."""
    tmp = tmp_path_factory.mktemp("opinion-service")
    rows = stream_rows()
    negative = scorer.probabilities([t for t, *_ in rows])[:, scorer.labels.index("negative")]
    wrong = [(t, round(float(p), 3)) for (t, _, n, _), p in zip(rows, negative) if (p > 0.5) != n]
    assert not wrong, f"the small model reads these texts the other way: {wrong}"
    monitor = OpinionMonitor(load_watchlist(watchlist_file(tmp)), scorer, DetectConfig(window_s=3600, burn_in=5),
                             out_dir=tmp / "out")
    report = StreamReport()
    items = [report.keep(Item(id=f"n{k}", text=t, time=when, source="wire", provenance=f"feed.jsonl:{k + 1}"))
             for k, (t, _, _, when) in enumerate(rows)]
    report.read = len(items) + 1
    report.drop("missing text", "feed.jsonl:61")
    for start in range(0, 60, 20):  # a batch per window
        monitor.process(items[start:start + 20])
    yield {"monitor": monitor, "report": report, "rows": rows}
    monitor.close()


@pytest.fixture(scope="module")
def service(fed):
    from prometheus_client import CollectorRegistry, Gauge

    from moatkit.serving.rest import serve_in_thread

    registry = CollectorRegistry()
    Gauge("moat_opinion_items", "items scored", registry=registry).set(60)
    api = OpinionApi(fed["monitor"], stream_status=lambda: {**fed["report"].as_dict(), "running": False},
                     registry=registry)
    server = make_dashboard_server(api, port=0, host="127.0.0.1")
    serve_in_thread(server)
    yield {"port": server.server_address[1], **fed}
    server.shutdown()
    server.server_close()


def call(port: int, method: str, path: str):
    """(status, content type, parsed JSON or text, headers)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=b"{}" if method in ("POST", "PUT") else None)
    response = connection.getresponse()
    text, ctype = response.read().decode("utf-8"), response.getheader("Content-Type")
    headers = dict(response.getheaders())
    connection.close()
    value = json.loads(text) if ctype == "application/json" and method != "HEAD" else text
    return response.status, ctype, value, headers


def get(service, path: str):
    status, _, value, _ = call(service["port"], "GET", path)
    return status, value


def counted(rows, entity, negative=None):
    return sum(1 for _, entities, n, _ in rows
               if (entity in entities if entity != MARKET else not entities) and negative in (None, n))


def test_page_static_files_headers_health_and_metrics(service):
    port = service["port"]
    status, ctype, page, headers = call(port, "GET", "/")
    assert (status, ctype) == (200, "text/html; charset=utf-8") and call(port, "GET", "/index.html")[2] == page
    assert call(port, "GET", "/?v=2")[2] == page  # the page ignores a query string; the API does not
    assert headers["Content-Security-Policy"] == "default-src 'self'" and headers["X-Content-Type-Options"] == "nosniff"
    assert "Cache-Control" not in headers
    assert "default-src 'self'" in page and "/static/dashboard.js" in page and "/static/dashboard.css" in page
    for element in ('id="entities"', 'id="alerts"', 'id="items"', 'id="timeline"', 'id="entity-select"', 'id="status"'):
        assert element in page, element
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # no CDN, no fonts
    status, ctype, script, _ = call(port, "GET", "/static/dashboard.js")
    assert (status, ctype) == (200, "text/javascript; charset=utf-8")
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "textContent" in script
    assert call(port, "GET", "/static/dashboard.css")[:2] == (200, "text/css; charset=utf-8")
    status, ctype, health, headers = call(port, "GET", "/healthz")
    assert (status, ctype, health) == (200, "application/json", {"status": "ok"})
    assert headers["Content-Security-Policy"] == "default-src 'self'"
    status, ctype, metrics, _ = call(port, "GET", "/metrics")
    assert (status, ctype) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert "# TYPE moat_opinion_items gauge" in metrics and "\nmoat_opinion_items 60.0\n" in metrics


def test_summary_counts_every_item_and_mention(service):
    rows = service["rows"]
    status, _, summary, headers = call(service["port"], "GET", "/api/summary")
    assert status == 200 and headers["Cache-Control"] == "no-store" and set(summary) == {"counts", "entities", "stream"}
    negatives = sum(n for _, _, n, _ in rows)
    assert summary["counts"] == {"items": 60, "mentions": 24 + 21, "unmatched": 18, "alerts": len(
        service["monitor"].alerts), "sentiment_negative": negatives, "sentiment_neutral": 0,
        "sentiment_positive": 60 - negatives}
    assert negatives == 4 + 4 + 10
    assert list(summary["entities"]) == ["Acme", "Globex", MARKET]
    # an entity's base share starts at the market's, whose history takes an unmatched item baseline_lag (30) items
    # late: after 18 unmatched items it is still the prior, 0.2, for all three
    for name, mentions, negative, base in (("Acme", 24, 12, 0.2), ("Globex", 21, 6, 0.2), (MARKET, 18, 3, 0.2)):
        assert (counted(rows, name), counted(rows, name, True)) == (mentions, negative)
        row = summary["entities"][name]
        assert {k: row[k] for k in ("mentions", "negative", "negative_share", "base_share")} == {
            "mentions": mentions, "negative": negative, "negative_share": round(negative / mentions, 4),
            "base_share": base}  # < baseline_lag (30) mentions each: no history of their own yet
        assert row["alerts"] == sum(a["entity"] == name for a in service["monitor"].alerts)
    assert summary["stream"] == {"read": 61, "kept": 60, "out_of_order": 0, "dropped": {"missing text": 1},
                                 "dropped_examples": {"missing text": ["feed.jsonl:61"]}, "running": False}


def test_timeline_has_three_hourly_buckets_and_filters_by_entity(service):
    status, timeline = get(service, "/api/timeline")
    assert status == 200 and timeline["window_s"] == 3600
    assert timeline["buckets"] == ["2026-01-05T00:00:00Z", "2026-01-05T01:00:00Z", "2026-01-05T02:00:00Z"]
    assert timeline["series"] == {
        "Acme": {"mentions": [8, 8, 8], "negative": [2, 2, 8], "neutral": [0, 0, 0], "positive": [6, 6, 0]},
        "Globex": {"mentions": [7, 7, 7], "negative": [2, 2, 2], "neutral": [0, 0, 0], "positive": [5, 5, 5]},
        MARKET: {"mentions": [6, 6, 6], "negative": [1, 1, 1], "neutral": [0, 0, 0], "positive": [5, 5, 5]}}
    status, globex = get(service, "/api/timeline?entity=Globex")
    assert status == 200 and globex["buckets"] == timeline["buckets"]
    assert globex["series"] == {name: timeline["series"][name] for name in ("Globex", MARKET)}
    assert get(service, "/api/timeline?entity=%28market%29")[1]["series"] == {MARKET: timeline["series"][MARKET]}
    assert get(service, "/api/timeline?entity=Initech") == (404, {
        "error": "'Initech' is not a watched entity (watched: Acme, Globex, (market))"})


def test_items_are_the_latest_negative_mentions_newest_first_with_markup_verbatim(service):
    rows = service["rows"]
    status, items = get(service, "/api/items?entity=Globex&limit=1000")
    assert status == 200 and set(items) == {"items"}
    expected = [t for t, entities, n, _ in reversed(rows) if n and "Globex" in entities]
    assert [i["text"] for i in items["items"]] == expected and len(expected) == 6 and SCRIPT_TEXT in expected
    script = next(i for i in items["items"] if i["text"] == SCRIPT_TEXT)
    assert set(script) == {"id", "time", "source", "text", "sentiment", "negative", "provenance", "entities"}
    assert (script["sentiment"], script["entities"], script["source"]) == ("negative", ["Globex"], "wire")
    assert script["negative"] > 0.5 and script["provenance"].startswith("feed.jsonl:")
    raw = urllib.request.urlopen(f"http://127.0.0.1:{service['port']}/api/items?entity=Globex", timeout=30).read()
    assert b"<script>alert(1)</script>" in raw  # as it came: escaping it is the page's job
    everything = get(service, "/api/items")[1]["items"]
    assert len(everything) == 12 + 6 - 3  # Acme's and Globex's negatives; the 3 naming both once
    assert [i["id"] for i in get(service, "/api/items?limit=2")[1]["items"]] == [i["id"] for i in everything[:2]]
    assert all(i["entities"] for i in everything)  # texts naming no entity are the market's, not items
    assert get(service, "/api/items?entity=Initech")[0] == 404


def test_alerts_are_newest_first_with_their_evidence_and_filter_by_entity(service):
    monitor = service["monitor"]
    status, alerts = get(service, "/api/alerts")
    assert status == 200 and alerts == {"alerts": list(reversed(monitor.alerts))}
    # the burst: Acme's 7th negative mention in a row of window 2 passes the threshold of base share 0.2
    assert [(a["entity"], a["detector"]) for a in alerts["alerts"]] == [("Acme", "negative-share")]
    alert = alerts["alerts"][0]
    assert {k: alert[k] for k in ("p0", "p1", "threshold", "mentions_in_run", "negatives_in_run", "share_in_run",
                                  "run_start")} == {"p0": 0.2, "p1": 0.6, "threshold": 7.484, "mentions_in_run": 7,
                                                    "negatives_in_run": 7, "share_in_run": 1.0,
                                                    "run_start": "2026-01-05T02:00:00Z"}
    assert alert["statistic"] >= alert["threshold"] and alert["time"].startswith("2026-01-05T02:")
    evidence = alert["evidence"]
    assert len(evidence) == 5 and all(e["text"] in ACME + [BOTH[0][0]] for e in evidence)
    assert [e["negative"] for e in evidence] == sorted((e["negative"] for e in evidence), reverse=True)
    assert set(evidence[0]) == {"id", "time", "source", "text", "negative", "provenance"}
    assert get(service, "/api/alerts?entity=Acme&limit=1")[1] == alerts
    assert get(service, "/api/alerts?entity=Globex") == (200, {"alerts": []})
    assert get(service, "/api/alerts?entity=Initech")[0] == 404


@pytest.mark.parametrize("query, message", [
    ("/api/alerts?limit=abc", "'limit' must be an integer from 1 to 1000, not 'abc'"),
    ("/api/alerts?limit=0", "'limit' must be an integer from 1 to 1000, not '0'"),
    ("/api/items?limit=1001", "'limit' must be an integer from 1 to 1000, not '1001'"),
    ("/api/items?limit=-3", "'limit' must be an integer from 1 to 1000, not '-3'"),
    ("/api/items?limit=2.5", "'limit' must be an integer from 1 to 1000, not '2.5'"),
    ("/api/items?limit=", "'limit' must be an integer from 1 to 1000, not ''"),
    ("/api/items?limit=1&limit=2", "'limit' is given 2 times; give it once"),
    ("/api/items?entity=", "'entity' is empty: give one of Acme, Globex (or leave it out for all)"),
    ("/api/items?entty=Acme", "unknown parameter 'entty': /api/items takes only 'entity', 'limit'"),
    ("/api/timeline?limit=5", "unknown parameter 'limit': /api/timeline takes only 'entity'"),
    ("/api/summary?x=1", "unknown parameter 'x': /api/summary takes no parameters")])
def test_bad_query_values_are_a_400_naming_the_parameter(service, query, message):
    status, ctype, body, _ = call(service["port"], "GET", query)
    assert (status, ctype, body) == (400, "application/json", {"error": message})
    assert "\n" not in json.dumps(body)


def test_unknown_paths_and_other_methods(service):
    port = service["port"]
    assert get(service, "/api/items?limit=1000")[0] == 200 and get(service, "/api/alerts?limit=1")[0] == 200
    assert call(port, "GET", "/static/../service.py")[:3] == (404, "application/json",
                                                             {"error": "no such path: /static/../service.py"})
    assert call(port, "GET", "/api/nope")[2] == {"error": "no such path: /api/nope"}
    for method in ("POST", "PUT", "DELETE"):
        status, ctype, body, headers = call(port, method, "/api/summary")
        assert (status, ctype, body) == (405, "application/json", {"error": f"/api/summary takes GET, not {method}"})
        assert headers["Cache-Control"] == "no-store"
    assert call(port, "HEAD", "/api/summary")[0] == 200


def test_plain_make_http_server_serves_it_and_an_empty_registry_is_an_empty_page(fed):
    from moatkit.serving.rest import make_http_server, serve_in_thread

    server = make_http_server(OpinionApi(fed["monitor"]), port=0, host="127.0.0.1")
    serve_in_thread(server)
    try:
        port = server.server_address[1]
        assert call(port, "GET", "/metrics")[:3] == (200, "text/plain; version=0.0.4; charset=utf-8", "")
        assert call(port, "GET", "/api/summary")[2]["stream"] is None
        assert "default-src 'self'" in call(port, "GET", "/")[2]  # the page's meta tag
    finally:
        server.shutdown()
        server.server_close()
