"""The opinion dashboard end to end in headless Chromium: a real OpinionMonitor (the exported MiniLM MR sentiment
model of tests/conftest.py `small_export`) fed a calm history and then a burst of negative Acme texts that alarms,
behind OpinionApi on serving/rest.py's server → the page's table, timeline, alerts and items. A text that is
markup must show as text: no element is made from it and no script runs."""
import os
from pathlib import Path

import pytest


EVIL = "<img src=x onerror=\"document.title='pwned'\"> Acme is a terrible, awful, boring disaster"
GOOD_ACME = ["Acme: a wonderful, brilliant quarter with delightful results",
             "Acme delivered a superb, moving, beautifully executed turnaround",
             "Acme's new product is charming, smart and a joy to use",
             "Acme posted a wonderful, triumphant quarter",
             "Acme's chief gave a brilliant, inspiring and delightful speech"]
BAD_ACME = ["Acme's results were a dreadful, embarrassing mess and investors are furious",
            "The Acme earnings call was a painful, dull, incompetent failure",
            "Acme shares collapsed after the fraud scandal, a pathetic failure",
            "Acme's guidance is a worthless, lifeless waste of time",
            "The Acme product launch was an awful, boring, embarrassing mess"]
GLOBEX = [("Globex management is brilliant and inspiring", False),
          ("Globex posted a wonderful, triumphant quarter", False),
          ("Globex results were a stupid, tedious, ugly failure", True)]
START = 1767571200.0  # 2026-01-05T00:00:00Z


def feed():
    """(text, negative?, time): 45 positive Acme and 15 Globex texts over three hours, then 40 negative Acme texts
    (the markup one among them) in the fourth."""
    history = []
    for k in range(60):
        text, negative = (GOOD_ACME[k % 5], False) if k % 4 else GLOBEX[(k // 4) % 3]
        history.append((text, negative, START + k * 180))
    burst = [(EVIL if k == 20 else BAD_ACME[k % 5], True, START + 3 * 3600 + k * 60) for k in range(40)]
    return history, burst


def js(number) -> str:
    """A number as JavaScript's String() writes it (3.0 → "3")."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, small_export):
    from moatkit.app.opinion.config import DetectConfig
    from moatkit.app.opinion.monitor import OpinionMonitor
    from moatkit.app.opinion.scorer import LocalScorer
    from moatkit.app.opinion.service import OpinionApi, make_dashboard_server
    from moatkit.app.opinion.stream import Item, StreamReport
    from moatkit.app.opinion.watchlist import load_watchlist
    from moatkit.serving.rest import serve_in_thread

    tmp = tmp_path_factory.mktemp("opinion-browser")
    (tmp / "watch.yaml").write_text("- {entity: Acme, tickers: [ACME]}\n- {entity: Globex}\n", encoding="utf-8")
    scorer = LocalScorer(small_export["version_dir"])
    history, burst = feed()
    negative = scorer.probabilities([t for t, _, _ in history + burst])[:, scorer.labels.index("negative")]
    wrong = sorted({(t, round(float(p), 3)) for (t, n, _), p in zip(history + burst, negative) if (p > 0.5) != n})
    assert not wrong, f"the small model reads these texts the other way: {wrong}"
    monitor = OpinionMonitor(load_watchlist(tmp / "watch.yaml"), scorer,
                             DetectConfig(window_s=3600, burn_in=5, baseline_lag=20, prior_strength=5))
    report = StreamReport()
    for part in (history, burst):
        monitor.process([report.keep(Item(id=f"i{report.kept}", text=t, time=when, source="wire",
                                          provenance=f"feed.jsonl:{report.kept + 1}")) for t, _, when in part])
    report.read = report.kept
    assert any(a["entity"] == "Acme" for a in monitor.alerts), monitor.alerts
    api = OpinionApi(monitor, stream_status=lambda: {**report.as_dict(), "running": True})
    server = make_dashboard_server(api, port=0, host="127.0.0.1")
    serve_in_thread(server)
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}/", "monitor": monitor}
    server.shutdown()
    server.server_close()


def test_dashboard_shows_entities_timeline_alerts_and_markup_as_text(dashboard, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    monitor = dashboard["monitor"]
    browser.get(dashboard["url"])
    assert browser.title == "Opinion monitor"
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#entities tr[data-entity]")) == 3)
    rows = {r.get_attribute("data-entity"): [c.text for c in r.find_elements(By.TAG_NAME, "td")]
            for r in browser.find_elements(By.CSS_SELECTOR, "#entities tr[data-entity]")}
    summary = monitor.summary()["entities"]
    assert rows["Acme"][:4] == ["Acme", "85", "40", f"{100 * 40 / 85:.1f}%"]
    assert rows["Globex"][:3] == ["Globex", "15", "5"] and rows["(market)"][:2] == ["(market)", "0"]
    assert rows["Acme"][5] == str(summary["Acme"]["alerts"]) and int(rows["Acme"][5]) >= 1

    # the alert list: Acme's alert with its statistic and its evidence texts
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#alerts .alert[data-entity="Acme"] .evidence li'))
    alerts = browser.find_elements(By.CSS_SELECTOR, "#alerts .alert")
    assert len(alerts) == len(monitor.alerts)
    newest = monitor.alerts[-1]
    first = alerts[0]  # newest first
    assert first.get_attribute("data-entity") == newest["entity"] == "Acme"
    head = first.find_element(By.CSS_SELECTOR, ".alert-head").text
    assert head == f"Acme · {newest['detector']} · {newest['time']}"
    stat = first.find_element(By.CSS_SELECTOR, ".alert-stat").text
    assert (f"statistic {js(newest['statistic'])} vs threshold {js(newest['threshold'])}" in stat
            if newest["detector"] == "negative-share" else f"vs {js(newest['expected'])} expected" in stat), stat
    evidence = first.find_elements(By.CSS_SELECTOR, ".evidence li")
    shown = [li.find_element(By.CSS_SELECTOR, ".text").text for li in evidence]
    assert shown == [e["text"] for e in newest["evidence"]] and all(t in BAD_ACME + [EVIL] for t in shown)
    scores = [li.find_element(By.CSS_SELECTOR, ".score").text for li in evidence]
    assert scores == [f"{e['negative']:.3f}" for e in newest["evidence"]]

    # the markup text is shown as text; nothing was made from it and its handler never ran
    wait.until(lambda d: any(e.text == EVIL for e in d.find_elements(By.CSS_SELECTOR, "#items .item .text")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#items .item")) == 45  # every negative item (≤ 50)
    assert browser.execute_script("return document.querySelectorAll('#items img, #alerts img, img').length") == 0
    assert browser.title == "Opinion monitor" and browser.execute_script("return document.title") != "pwned"

    # the timeline: Acme first (negative share line, mention bars, alert marks), then Globex when chosen
    chart = browser.find_element(By.ID, "timeline")
    wait.until(lambda d: chart.get_attribute("data-entity") == "Acme"
               and chart.find_elements(By.CSS_SELECTOR, "polyline.share"))
    assert chart.get_attribute("data-buckets") == "4"
    acme_line = chart.find_element(By.CSS_SELECTOR, "polyline.share").get_attribute("points")
    assert len(acme_line.split()) == 4 and len(chart.find_elements(By.CSS_SELECTOR, "rect.bar")) == 4
    assert chart.find_elements(By.CSS_SELECTOR, "line.alert-mark")
    Select(browser.find_element(By.ID, "entity-select")).select_by_value("Globex")
    wait.until(lambda d: chart.get_attribute("data-entity") == "Globex")
    globex_line = chart.find_element(By.CSS_SELECTOR, "polyline.share").get_attribute("points")
    assert globex_line != acme_line and len(globex_line.split()) == 3  # Globex: no mentions in the burst's hour
    assert not chart.find_elements(By.CSS_SELECTOR, "line.alert-mark")
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("stream running: read 100, kept 100, dropped 0") and "100 items" in status

    artifacts = Path(os.environ.get("MOAT_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    Select(browser.find_element(By.ID, "entity-select")).select_by_value("Acme")
    wait.until(lambda d: chart.get_attribute("data-entity") == "Acme")
    browser.save_screenshot(str(artifacts / "opinion_dashboard.png"))
    print(f"screenshot: {artifacts / 'opinion_dashboard.png'}")
