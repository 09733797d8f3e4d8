"""`moat data prepare` end to end on real sources: full accounting, data card, cache no-op, resume, bad input."""
import json
import struct

import pytest

from moatkit.app.cli import main
from moatkit.data.core.errors import ConfigError, DataError
from moatkit.data import prepare as prepare_module
from moatkit.data.dataset import read_manifest, read_records, sha256_file
from moatkit.data.fetch import fetch
from moatkit.data.prepare import PrepareConfig, prepare
from moatkit.data.readers import SourceConfig


def _events(logdir):
    """Events of a TensorBoard file, parsed without TensorFlow (TFRecord framing, then the Event proto)."""
    from tensorboard.compat.proto import event_pb2
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            events.append(event_pb2.Event.FromString(data[12:12 + length]))
            data = data[12 + length + 4:]
    return events


@pytest.fixture(scope="module")
def mr_tweets(tmp_path_factory, mr_dir):
    fetch("tweets")
    config = PrepareConfig(sources=[SourceConfig(uri="catalog:mr"), SourceConfig(uri="catalog:tweets")],
                           out=str(tmp_path_factory.mktemp("prep") / "sentiment"), progress=False)
    return config, prepare(config)


def test_mr_and_tweets_account_for_every_input_record(mr_tweets):
    _, out = mr_tweets
    report = json.loads((out / "report.json").read_text())
    assert report["by_source"]["mr"]["input"] == 10_605 and report["by_source"]["tweets"]["input"] == 4_200
    assert report["input"] == 14_805 == report["kept"] + report["dropped"]
    assert report["dropped"] == len(report["dropped_records"]) == sum(report["dropped_by_reason"].values())
    assert sum(report["dropped_by_stage"].values()) == report["dropped"]
    assert report["dropped_by_stage"]["fetch"] == 41  # sentences scored exactly 0: 37 in MR, 4 tweets
    assert 0 < report["dropped_by_stage"]["clean"] < 50 and report["dropped_by_stage"]["dedup"] > 100
    for name, counts in report["by_source"].items():
        assert counts["input"] == counts["kept"] + sum(v for k, v in counts.items() if k.startswith("dropped_")), name
    records = read_records(out, verify=True)
    assert len(records) == report["kept"] and len({r["id"] for r in records}) == len(records)
    kept_ids = {r["id"] for r in records}
    assert all(d["duplicate_of"] in kept_ids for d in report["dropped_records"] if d["stage"] == "dedup")
    manifest = read_manifest(out)
    assert manifest["labels"] == ["negative", "positive"]
    assert [p["name"] for p in manifest["provenance"]["prepared_from"]] == ["mr", "tweets"]
    assert report["languages"]["en"] > 10_000


def test_data_card_and_its_tensorboard_summary(mr_tweets):
    _, out = mr_tweets
    card = (out / "card.md").read_text()
    for section in ("# Data card: sentiment", "## Sources", "## Length (words per record)", "## Language mix",
                    "## Labels", "## Top dropped reasons", "## Duplicates", "14,805 input records"):
        assert section in card, section
    texts = [v.tensor.string_val[0].decode() for e in _events(out / "tensorboard") for v in e.summary.value
             if v.tag == "data_card"]
    assert texts == [card]


def test_rerun_with_same_config_is_a_no_op_and_a_change_rebuilds(mr_tweets, tmp_path):
    config, out = mr_tweets
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert prepare(config) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    small = PrepareConfig(sources=[SourceConfig(uri="catalog:tweets", limit=300)], out=str(tmp_path / "t"),
                          progress=False)
    first = json.loads((prepare(small) / "report.json").read_text())
    small.clean.min_words = 5
    second = json.loads((prepare(small) / "report.json").read_text())
    assert second["dropped_by_reason"].get("too-short", 0) > first["dropped_by_reason"].get("too-short", 0)


def test_interrupted_run_resumes_from_its_checkpoints(tmp_path, monkeypatch):
    tweets = read_records(fetch("tweets"))[:1200]
    source = tmp_path / "tweets.jsonl"
    source.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in tweets))
    config = PrepareConfig(sources=[SourceConfig(uri=str(source), label_field="label")], out=str(tmp_path / "out"),
                           chunk_size=300, progress=False, keep_work=True)
    real_clean, calls = prepare_module.clean_record, []

    def interrupting_clean(record, clean_config):
        calls.append(record["id"])
        if len(calls) == 700:
            raise KeyboardInterrupt
        return real_clean(record, clean_config)

    monkeypatch.setattr(prepare_module, "clean_record", interrupting_clean)
    with pytest.raises(KeyboardInterrupt):
        prepare(config)
    assert not (tmp_path / "out").exists()
    assert len(list((tmp_path / "out.work").rglob("chunk-*.jsonl.gz"))) == 2  # 600 records checkpointed
    calls.clear()
    out = prepare(config)
    assert len(calls) == 600  # only the unfinished chunks were cleaned again
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoints"] == {"chunks_reused": 2, "chunks_computed": 2}
    assert report["input"] == 1200 == report["kept"] + report["dropped"]
    monkeypatch.setattr(prepare_module, "clean_record", real_clean)
    fresh = prepare(PrepareConfig(sources=config.sources, out=str(tmp_path / "fresh"), chunk_size=1200,
                                  progress=False))
    shard = "data-00000.jsonl.gz"
    assert sha256_file(out / shard) == sha256_file(fresh / shard)


def test_bad_inputs_raise_one_clear_error_or_are_counted_when_skipping(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "A perfectly good sentence about a movie."}\n{"body": "no text"}\n')
    (folder / "b.txt").write_bytes("fine line\ncaf\xe9\n".encode("latin-1"))
    (folder / "c.csv").write_text("text\n")  # header only: no records
    config = PrepareConfig(sources=[SourceConfig(uri=str(folder / "a.jsonl")), SourceConfig(uri=str(folder / "b.txt"))],
                           out=str(tmp_path / "out"), progress=False)
    with pytest.raises(DataError, match=r"a.jsonl:2: no field 'text'"):
        prepare(config)
    config.on_error = "skip"
    config.sources.append(SourceConfig(uri=str(folder / "c.csv")))
    report = json.loads((prepare(config) / "report.json").read_text())
    assert report["input"] == 4 == report["kept"] + report["dropped"]
    assert report["dropped_by_reason"] == {"missing-field:text": 1, "decode-error": 1}
    assert report["skipped_sources"] == [str(folder / "c.csv")]
    with pytest.raises(ConfigError, match="both named"):
        PrepareConfig(sources=[SourceConfig(uri="catalog:mr"), SourceConfig(uri="x/mr.csv")], out="o").validate()


def test_cli_prepare_prints_a_summary_and_rejects_mistakes(tmp_path, capsys):
    source = tmp_path / "notes.txt"
    source.write_text("Contact me at someone@example.com about the screening tonight.\nshort one\n")
    assert main(["data", "prepare", "--source", str(source), "--out", str(tmp_path / "o"),
                 "--set", "progress=false", "--set", "tensorboard=false"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["input"], line["kept"], line["dropped"]) == (2, 2, 0)
    assert read_records(tmp_path / "o")[0]["text"] == "Contact me at <EMAIL> about the screening tonight."
    reviews = tmp_path / "reviews.csv"
    reviews.write_text("review_id,body,stars\nr1,A quiet and moving film about two sisters.,5\n"
                       "r2,Ceci est une critique en français sur un film ennuyeux et beaucoup trop long.,1\n")
    config = tmp_path / "mix.yaml"
    config.write_text(f"out: {tmp_path / 'mix'}\nprogress: false\nsources:\n"
                      f"  - {{uri: '{reviews}', text_field: body, label_field: stars, id_field: review_id}}\n"
                      f"  - {{uri: '{source}', name: notes, profile: prose}}\n")
    assert main(["data", "prepare", "--config", str(config), "--set", "clean.min_words=3"]) == 0
    report = json.loads((tmp_path / "mix" / "report.json").read_text())
    assert [(d["id"], d["reason"]) for d in report["dropped_records"]] == [("r2", "lang:fr"), ("notes-1", "too-short")]
    assert [r["id"] for r in read_records(tmp_path / "mix")] == ["r1", "notes-0"]
    capsys.readouterr()
    assert main(["data", "prepare", "--out", str(tmp_path / "o2")]) == 2
    assert "at least one source" in capsys.readouterr().err
    assert main(["data", "prepare", "--source", str(source), "--out", str(tmp_path / "o3"),
                 "--set", "clean.profile=web"]) == 2


def test_pretraining_mix_small_slice(tmp_path):
    sources = [SourceConfig(uri="catalog:python-docs", profile="prose", limit=40),
               SourceConfig(uri="catalog:brown", profile="prose", limit=400),
               SourceConfig(uri="catalog:movie-dialog", limit=400)]
    out = prepare(PrepareConfig(sources=sources, out=str(tmp_path / "mix"), progress=False, tensorboard=False))
    report = json.loads((out / "report.json").read_text())
    assert report["input"] == 840 == report["kept"] + report["dropped"]
    assert set(report["by_source"]) == {"python-docs", "brown", "movie-dialog"}
    assert "text_pair" in read_manifest(out)["schema"]


@pytest.mark.slow
def test_pretraining_mix_full(tmp_path):
    sources = [SourceConfig(uri="catalog:python-docs", profile="prose"),
               SourceConfig(uri="catalog:brown", profile="prose"), SourceConfig(uri="catalog:movie-dialog")]
    out = prepare(PrepareConfig(sources=sources, out=str(tmp_path / "mix"), progress=False))
    report = json.loads((out / "report.json").read_text())
    inputs = {"python-docs": 497, "brown": 15_667, "movie-dialog": 64_350}
    assert {n: c["input"] for n, c in report["by_source"].items()} == inputs
    assert report["input"] == sum(inputs.values()) == report["kept"] + report["dropped"]
