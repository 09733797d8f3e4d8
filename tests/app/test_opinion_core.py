"""Opinion monitoring without a model: watch-list matching, stream readers' accounting, the detectors' calibration."""
import gzip
import json
import math

import numpy as np
import pytest

from moatkit.app.opinion.detect import ShareCusum, VolumeTest, _threshold_units
from moatkit.app.opinion.stream import StreamReport, parse_time, read_files, replay_catalog, tail
from moatkit.app.opinion.watchlist import load_watchlist
from moatkit.data.core.errors import ConfigError
from moatkit.data.finance_sources import parse_lm_lexicon, split_sentences

FIELDS = {"text": "text", "time": "time", "source": "source"}


def _watchlist(tmp_path, text):
    path = tmp_path / "watch.yaml"
    path.write_text(text)
    return load_watchlist(path)


def test_watchlist_matches_aliases_possessives_tickers_and_not_lookalikes(tmp_path):
    w = _watchlist(tmp_path, "- {entity: General Motors, aliases: [GM], tickers: [GM]}\n- {entity: Yukos}\n"
                             "- {entity: London Stock Exchange, aliases: [LSE]}\n- Deutsche Bank\n")
    assert w.match("Yukos's shares fell; GM too") == ["General Motors", "Yukos"]
    assert w.match("YUKOS' debts") == ["Yukos"] and w.match("the london stock-exchange opened") == ["London Stock Exchange"]
    assert w.match("gm everyone, good morning") == []  # an acronym alias matches upper case only
    assert w.match("buy $GM now") == ["General Motors"] and w.match("Yukosneft and Yukosi") == []
    assert w.match("deutsche bank's profit") == ["Deutsche Bank"] and w.match("nothing here") == []


@pytest.mark.parametrize("text, message", [
    ("[]\n", "names no entities"), ("- {entity: The}\n", "would match almost every text"),
    ("- {entity: Acme, aliases: [a]}\n", "would match almost every text"), ("- {aliases: [x]}\n", "needs an 'entity'"),
    ("- {entity: Acme, tickers: [acme]}\n", "not upper-case"), ("- Acme\n- Acme\n", "more than once"),
    ("- [unclosed\n", "not valid YAML")])
def test_watchlist_errors_name_the_entry_and_the_fix(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        _watchlist(tmp_path, text)


def test_an_alias_that_is_a_common_word_is_refused(tmp_path):
    w = _watchlist(tmp_path, "- {entity: Shell, aliases: [oil]}\n")
    texts = ["oil prices rose", "oil fell", "the oil market", "cars"]
    with pytest.raises(ConfigError, match="alias 'oil' of 'Shell' matches 3 of 4 lines of general English"):
        w.check_against(texts, max_share=0.5)
    w.check_against(texts, max_share=0.8)


def test_stream_files_account_for_every_line(tmp_path):
    lines = [{"text": "Acme fell", "time": "2026-01-05T10:00:00Z", "source": "wire"},
             {"text": "no time here"}, "not json {", {"text": "", "time": 5},
             {"text": "older", "time": "2026-01-05T09:00:00"}, {"text": "bad time", "time": "yesterday"},
             {"text": "epoch", "time": 1767600000}]
    (tmp_path / "a.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "gz item", "time": 1767620000}) + "\n")
    (tmp_path / "c.csv").write_text("text,time,source\n\"Globex, up\",2026-01-06,csv\nshort row\n")
    report = StreamReport()
    items = list(read_files(tmp_path, report, FIELDS))
    assert [i.text for i in items] == ["Acme fell", "older", "epoch", "gz item", "Globex, up"]
    assert items[0].source == "wire" and items[0].provenance.endswith("a.jsonl:1") and items[3].source == "b.jsonl"
    assert items[0].time == parse_time("2026-01-05T10:00:00+00:00") and items[1].time == items[0].time - 3600
    d = report.as_dict()
    assert d["read"] == 10 and d["kept"] == 5 and d["out_of_order"] == 2  # "older", and "epoch" (< 10:00)
    assert d["dropped"] == {"missing timestamp": 1, "malformed line": 2, "missing text": 1, "unreadable timestamp": 1}
    assert d["dropped_examples"]["malformed line"] == [f"{tmp_path / 'a.jsonl'}:3", f"{tmp_path / 'c.csv'}:3"]
    with pytest.raises(ConfigError, match="does not exist"):
        list(read_files(tmp_path / "nope", StreamReport(), FIELDS))


def test_tail_follows_appended_lines_and_waits_for_a_partial_line(tmp_path):
    path = tmp_path / "live.jsonl"
    path.write_text(json.dumps({"text": "first", "time": 1}) + "\n")
    report, seen, polls = StreamReport(), [], []

    def stop():
        polls.append(1)
        if len(polls) == 2:  # after the first pass: append one full line and half of another
            with open(path, "a") as f:
                f.write(json.dumps({"text": "second", "time": 2}) + "\n" + '{"text": "thi')
        if len(polls) == 3:
            with open(path, "a") as f:
                f.write('rd", "time": 3}\n')
        return len(polls) > 4

    for item in tail(path, report, FIELDS, stop=stop, poll_s=0.0):
        if item is not None:
            seen.append((item.text, item.provenance.rsplit(":", 1)[1]))
    assert seen == [("first", "1"), ("second", "2"), ("third", "3")] and report.kept == 3


def test_replay_catalog_is_seeded_and_clocked():
    report = StreamReport()
    items = list(replay_catalog(["bbc-business"], start=1000.0, items_per_minute=6, limit=50, seed=1, report=report))
    again = list(replay_catalog(["bbc-business"], start=1000.0, items_per_minute=6, limit=50, seed=1,
                                report=StreamReport()))
    assert [i.id for i in items] == [i.id for i in again] and len(items) == 50 == report.kept
    assert items[1].time - items[0].time == 10.0 and "synthetic time" in items[0].provenance


def test_bbc_sentences_and_lm_lexicon_parsing():
    assert split_sentences("Mr. Smith said U.S. sales rose 2.5%. Shares fell! Why? \"Fine,\" he said.") == [
        "Mr. Smith said U.S. sales rose 2.5%.", "Shares fell!", "Why?", "\"Fine,\" he said."]
    header = "Word,Negative,Positive,Uncertainty,Litigious,Constraining\n"
    kept, dropped = parse_lm_lexicon((header + "LOSS,2009,0,0,0,0\nGAIN,0,2009,0,0,0\nTABLE,0,0,0,0,0\n"
                                      "VAGUE,0,0,x,0,0\n").encode())
    assert [(r["text"], r["label"]) for r in kept] == [("loss", "negative"), ("gain", "positive")]
    assert dropped == [{"id": "lm-line5", "reason": "category column is not a number"}]


@pytest.mark.parametrize("p0", [0.1, 0.2, 0.35])
def test_cusum_threshold_meets_its_false_alarm_budget_and_detects_a_tripled_share(p0):
    arl = 2_000
    up, down, h = _threshold_units(int(p0 * 1000), 3.0, arl)
    assert up == 16 and h > up
    rng = np.random.default_rng(0)
    alarms, n = 0, 200_000
    cusum = ShareCusum(shift=3, arl=arl, prior_share=p0, prior_strength=1e12, burn_in=0, baseline_lag=10)
    for negative in rng.random(n) < p0:
        alarms += cusum.update(bool(negative)) is not None
    # in control: about one alarm per ARL mentions (the ARL is from a fresh start; later runs start nearer 0)
    assert alarms / n * arl < 1.3
    delays = []
    for trial in range(60):
        cusum = ShareCusum(shift=3, arl=10_000, prior_share=p0, prior_strength=1e12, burn_in=0, baseline_lag=10)
        for negative in rng.random(200) < p0:
            cusum.update(bool(negative))
        for k, negative in enumerate(rng.random(400) < min(3 * p0, 0.95)):
            if cusum.update(bool(negative)) is not None:
                delays.append(k + 1)
                break
    assert len(delays) == 60 and np.median(delays) <= 50


def test_cusum_base_share_lags_so_a_burst_cannot_hide_itself():
    cusum = ShareCusum(shift=3, arl=10_000, prior_share=0.5, prior_strength=10, burn_in=20, baseline_lag=50)
    for n in range(200):
        cusum.update(n % 10 == 0)  # 10 % negative
    base = cusum.p0
    assert abs(base - (15 + 5) / 160) < 1e-9  # 150 mentions in the history (+10 prior at 0.5)
    alarm = None
    for _ in range(50):
        alarm = alarm or cusum.update(True)
    assert alarm is not None and alarm["p0"] < base + 0.005 and alarm["statistic"] >= alarm["threshold"]
    assert math.isclose(alarm["p1"], 3 * alarm["p0"], rel_tol=1e-3)


def test_volume_test_is_bonferroni_corrected_and_keeps_alarms_out_of_its_baseline():
    test = VolumeTest(alpha=0.01, n_entities=10, min_windows=3, min_count=5)
    assert [test.close_window(c) for c in (2, 3, 2, 2)] == [None] * 4
    alarm = test.close_window(14)
    assert alarm is not None and alarm["count"] == 14 and alarm["alpha"] == 0.001 and alarm["p_value"] < 0.001
    assert test.windows == 4 and test.close_window(4) is None  # the alarming window is not in the mean
