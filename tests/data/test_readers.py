"""Readers: every local format, gzip, folders and globs, and one clear error (or a counted skip) per bad input."""
import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moatkit.data.core.errors import DataError
from moatkit.data.readers import SourceConfig, read_source, source_name


def _read(uri, **kwargs):
    on_error = kwargs.pop("on_error", "raise")
    items = list(read_source(SourceConfig(uri=str(uri), **kwargs), on_error=on_error))
    return [r for r, _ in items if r is not None], [d for _, d in items if d is not None]


def test_txt_units_and_gzip(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\nthird\n\n\n")
    assert [r["text"] for r in _read(tmp_path / "a.txt")[0]] == ["first line", "second line", "third"]
    assert [r["text"] for r in _read(tmp_path / "a.txt", txt_unit="paragraph")[0]] == [
        "first line", "second line\nthird"]
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress("zipped line\n".encode()))
    records, _ = _read(tmp_path / "b.txt.gz", txt_unit="file")
    assert records == [{"id": "b-0", "text": "zipped line\n"}]


def test_jsonl_csv_tsv_parquet_fields(tmp_path):
    rows = [{"body": "great film", "y": "pos", "s": 2.5, "key": "k1"}, {"body": "dull", "y": "neg", "s": -1, "key": "k2"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "d.csv").write_text('body,y,s,key\n"great film",pos,2.5,k1\n"dull",neg,-1,k2\n')
    (tmp_path / "d.tsv").write_text("body\ty\ts\tkey\ngreat film\tpos\t2.5\tk1\ndull\tneg\t-1\tk2\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    fields = dict(text_field="body", label_field="y", score_field="s", id_field="key")
    expected = [{"id": "k1", "text": "great film", "label": "pos", "score": 2.5},
                {"id": "k2", "text": "dull", "label": "neg", "score": -1.0}]
    for suffix in ("jsonl", "csv", "tsv", "parquet"):
        assert _read(tmp_path / f"d.{suffix}", **fields) == (expected, []), suffix


def test_html_text_extraction(tmp_path):
    (tmp_path / "page.html").write_text(
        "<html><head><title>A page</title><style>p {color: red}</style><script>var x = 1;</script></head>"
        "<body><nav>Home | About</nav><h1>Heading</h1><p>First   paragraph &amp; more.</p><p>Second.</p>"
        "<footer>Cookie policy</footer></body></html>")
    records, _ = _read(tmp_path / "page.html")
    assert records == [{"id": "page-0", "text": "Heading\nFirst paragraph & more.\nSecond.",
                        "meta": {"title": "A page"}}]


def test_folder_and_glob_read_sorted_files(tmp_path):
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text(f"text of {name}\n")
    assert [r["text"] for r in _read(tmp_path)[0]] == ["text of a.txt", "text of b.txt", "text of c.md"]
    assert [r["id"] for r in _read(f"{tmp_path}/*.txt", name="docs")[0]] == ["docs-0", "docs-1"]
    assert source_name(SourceConfig(uri="catalog:mr")) == "mr"
    assert source_name(SourceConfig(uri="x/reviews.jsonl.gz")) == "reviews"


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        _read(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="matches no files"):
        _read(f"{tmp_path}/*.csv")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="has no records"):
        _read(tmp_path / "empty.jsonl")
    _, drops = _read(tmp_path / "empty.jsonl", on_error="skip")
    assert [d["reason"] for d in drops] == ["empty-source"]


def test_wrong_encoding_names_the_line_or_skips_it(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("fine\nalso fine\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt:3: not valid utf-8.*encoding: latin-1"):
        _read(path)
    records, drops = _read(path, on_error="skip")
    assert [r["text"] for r in records] == ["fine", "also fine"]
    assert [(d["reason"], d["origin"]) for d in drops] == [("decode-error", f"{path}:3")]
    assert [r["text"] for r in _read(path, encoding="latin-1")[0]][-1] == "café au lait"


def test_csv_rows_with_extra_cells_and_tsv_quotes(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\ngood one,pos\nan unquoted, comma,neg\n")
    with pytest.raises(DataError, match=r"d.csv:3: 3 cells for 2 columns"):
        _read(tmp_path / "d.csv")
    records, drops = _read(tmp_path / "d.csv", on_error="skip")
    assert [r["text"] for r in records] == ["good one"] and [d["reason"] for d in drops] == ["malformed-row"]
    (tmp_path / "d.tsv").write_text("text\n\"Conan\" is ''back''\n")
    assert _read(tmp_path / "d.tsv")[0][0]["text"] == "\"Conan\" is ''back''"


def test_missing_column_and_field(tmp_path):
    (tmp_path / "d.csv").write_text("review,stars\ngood,5\n")
    with pytest.raises(DataError, match=r"d.csv: no column 'text' \(columns: review, stars\)"):
        _read(tmp_path / "d.csv")
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\nnot json\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: no field 'text'"):
        _read(tmp_path / "d.jsonl")
    records, drops = _read(tmp_path / "d.jsonl", on_error="skip")
    assert [r["text"] for r in records] == ["ok"]
    assert [(d["reason"], d["origin"].rsplit("/", 1)[1]) for d in drops] == [
        ("missing-field:text", "d.jsonl:2"), ("malformed-json", "d.jsonl:3")]


def test_unreadable_file(tmp_path):
    if os.geteuid() != 0:
        path = tmp_path / "secret.txt"
        path.write_text("x\n")
        path.chmod(0)
    else:  # root reads any file whatever its mode; this one fails with EIO on Linux
        path = "/proc/self/mem"
    with pytest.raises(DataError, match="cannot read '.*' .*permissions"):
        _read(path, format="txt")
    _, drops = _read(path, format="txt", on_error="skip")
    assert [d["reason"] for d in drops] == ["unreadable-file"]


def test_damaged_gzip_and_unknown_format(tmp_path):
    (tmp_path / "bad.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="damaged gzip"):
        _read(tmp_path / "bad.jsonl.gz")
    _, drops = _read(tmp_path / "bad.jsonl.gz", on_error="skip")
    assert drops[0]["reason"] == "unreadable-file"
    (tmp_path / "data.xyz").write_text("x")
    with pytest.raises(DataError, match="cannot tell the format"):
        _read(tmp_path / "data.xyz")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable parquet file"):
        _read(tmp_path / "broken.parquet")


def test_hugging_face_source_fails_clearly_offline():
    with pytest.raises(DataError, match="(datasets` package|could not load Hugging Face dataset)"):
        _read("hf:stanfordnlp/imdb")


def test_catalog_source_carries_the_fetch_drops(mr_dir):
    records, drops = _read("catalog:mr")
    assert len(records) + len(drops) == 10_605  # every line of the carrier file
    assert {d["stage"] for d in drops} == {"fetch"} and len(drops) == 37


def test_a_dataset_dir_source_reads_its_shards_and_not_its_logs(tmp_path):
    from moatkit.data.dataset import write_dataset
    out = tmp_path / "reviews"
    write_dataset(out, [{"id": "r1", "text": "a fine film", "source": "mr"}], name="reviews", provenance={},
                  license="test")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.0.host").write_bytes(b"\x00binary")
    records, drops = _read(out)
    assert [r["text"] for r in records] == ["a fine film"] and drops == []
    assert source_name(SourceConfig(uri=str(out))) == "reviews"
