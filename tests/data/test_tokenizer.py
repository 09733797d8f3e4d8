"""WordPiece training on real MR sentences: HF loads it, and the export graph's tokenizer gives the same ids."""
import json
import unicodedata

import pytest

from moatkit.data.core.errors import ConfigError, DataError, ModelError
from moatkit.data.dataset import read_records, write_dataset
from moatkit.data.tokenizer import SPECIAL_TOKENS, TokenizerConfig, in_graph_parity, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def mr_parts(mr_dir, tmp_path_factory):
    """MR split 80/20 in file order: the tokenizer never sees the held-out sentences."""
    records = read_records(mr_dir)
    cut = int(len(records) * 0.8)
    train_dir = tmp_path_factory.mktemp("mr-train")
    write_dataset(train_dir, records[:cut], name="mr-train", provenance={"from": str(mr_dir)}, license="test")
    return train_dir, [r["text"] for r in records[cut:]]


@pytest.fixture(scope="module")
def uncased(mr_parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok-uncased")
    report = train_tokenizer(mr_parts[0], out, TokenizerConfig(vocab_size=8000, parity_sample=500))
    return out, report


def test_bert_layout_and_hf_loading(uncased):
    from transformers import BertTokenizerFast

    out, report = uncased
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "report.json"):
        assert (out / name).is_file(), name
    tokenizer = BertTokenizerFast.from_pretrained(str(out))
    assert len(tokenizer) == report["vocab_size"] == 8000
    assert report["special_ids"] == {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
    assert [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id] == [0, 100, 101, 102, 103]
    assert tokenizer.convert_ids_to_tokens(1) == "[unused0]"
    encoded = tokenizer("The Rock is destined to be the 21st Century's new Conan")
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and "rock" in pieces  # lower-cased
    assert report["corpus"]["records"] == 8454 and report["sample"]["unk_rate"] < 0.001
    assert 1.0 < report["sample"]["pieces_per_word"] < 1.3
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True


def test_in_graph_tokenizer_matches_on_held_out_text(uncased, mr_parts):
    """Held-out MR (2,114 sentences) plus TREC questions (5,381): ids identical to BertTokenizerFast's."""
    from moatkit.data.fetch import fetch

    out, report = uncased
    assert report["in_graph_parity"]["rate"] >= 0.999
    texts = mr_parts[1] + [r["text"] for r in read_records(fetch("trec"))]
    parity = in_graph_parity(out, texts, examples=50)
    assert parity["texts"] == len(texts) == 7495
    assert parity["rate"] >= 0.999, parity["mismatches"][:3]
    print(f"in-graph exact match {parity['exact']}/{parity['texts']}")
    # The one known class: compatibility characters ('½') that FastBertTokenizer decomposes (NFKD) and HF keeps.
    for mismatch in parity["mismatches"]:
        assert any(unicodedata.normalize("NFKD", c) != unicodedata.normalize("NFD", c) for c in mismatch["text"])


def test_cased_tokenizer(mr_parts, tmp_path):
    report = train_tokenizer(mr_parts[0], tmp_path, TokenizerConfig(vocab_size=6000, lower_case=False,
                                                                    reserved_tokens=0, parity_sample=300))
    tokenizer = load_tokenizer(tmp_path)
    assert report["special_ids"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert tokenizer.tokenize("Rock rock")[0] != tokenizer.tokenize("Rock rock")[1]
    assert report["in_graph_parity"]["rate"] >= 0.999


def test_user_mistakes(mr_parts, tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(mr_parts[0], tmp_path, TokenizerConfig(vocab_size=150))
    with pytest.raises(DataError, match="no text in fields"):
        train_tokenizer(mr_parts[0], tmp_path, TokenizerConfig(vocab_size=1000, text_fields=["body"]))
    with pytest.raises(DataError, match="not a dataset dir"):
        train_tokenizer(tmp_path, tmp_path / "out", TokenizerConfig())
    with pytest.raises(ModelError, match="not a tokenizer dir"):
        load_tokenizer(tmp_path)


def test_cli(mr_parts, tmp_path, capsys):
    from moatkit.app.cli import main

    assert main(["data", "tokenizer", str(mr_parts[0]), "--out", str(tmp_path), "--vocab-size", "3000",
                 "--set", "parity_sample=0"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["vocab_size"] == 3000 and line["special_ids"]["[MASK]"] == 103
    assert (tmp_path / "vocab.txt").read_text().splitlines()[:1] == ["[PAD]"]
    assert set(SPECIAL_TOKENS) <= set((tmp_path / "vocab.txt").read_text().splitlines())
    assert main(["data", "tokenizer", str(mr_parts[0]), "--out", str(tmp_path), "--vocab-size", "100"]) == 2
    assert "vocab_size=100" in capsys.readouterr().err
