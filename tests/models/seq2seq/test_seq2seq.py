"""Translation on real Bible verse pairs: data split, tokenizer, loss, baselines, training smoke + resume, export."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from moatkit.data.core.errors import ConfigError
from moatkit.models.seq2seq.data import EOS_ID, SPECIALS, SubwordTokenizer, load_pairs, split_pairs, train_vocab
from moatkit.models.seq2seq.train import (InverseSqrtSchedule, Seq2SeqConfig, dictionary_baseline,
                                          masked_loss_and_accuracy, train_seq2seq)
from moatkit.models.transformer import TransformerConfig

SENTENCES = ["Im Anfang schuf Gott Himmel und Erde.", "Und Gott sprach: Es werde Licht!"]


@pytest.fixture(scope="module")
def pairs():
    return load_pairs("bible-en-de", source_lang="de")


def tiny_config(run_dir, **overrides) -> Seq2SeqConfig:
    model = TransformerConfig(dim=32, encoder_layers=1, decoder_layers=1, num_heads=2, intermediate_dim=64,
                              dropout=0.0, max_length=32)
    return dataclasses.replace(Seq2SeqConfig(
        run_dir=str(run_dir), vocab_size=400, max_length=32, batch_tokens=1200, epochs=1, warmup_steps=10,
        learning_rate_scale=0.5, log_every=5, eval_every=1000, dev_bleu_sentences=8, max_train_pairs=1500,
        max_dev_pairs=64, max_test_pairs=12, beam_size=2, model=model), **overrides)


def test_pairs_and_chapter_split(pairs):
    assert len(pairs) == 31102
    assert pairs[0]["source"] == "Im Anfang schuf Gott die Himmel und die Erde."
    assert pairs[0]["target"] == "In the beginning God created the heaven and the earth."
    splits = split_pairs(pairs, by="chapter", dev_fraction=0.02, test_fraction=0.05, seed=0)
    assert sum(len(v) for v in splits.values()) == len(pairs)  # nothing dropped
    chapters = {name: {(p["book"], p["chapter"]) for p in items} for name, items in splits.items()}
    assert not chapters["train"] & chapters["test"] and not chapters["train"] & chapters["dev"]
    assert 0.03 < len(splits["test"]) / len(pairs) < 0.07
    by_book = split_pairs(pairs, by="book", dev_fraction=0.1, test_fraction=0.1, seed=0)
    books = {name: {p["book"] for p in items} for name, items in by_book.items()}
    assert not books["train"] & books["test"]


def test_tokenizer_round_trip_in_graph(pairs):
    vocab = train_vocab([p["source"] for p in pairs[:3000]], vocab_size=2000)
    assert tuple(vocab[:4]) == SPECIALS and len(vocab) == 2000 and vocab[4:] == sorted(vocab[4:])
    tokenizer = SubwordTokenizer(vocab)
    ids = tokenizer.tokenize(tf.constant(SENTENCES))
    padded = tf.concat([ids.to_tensor(0), tf.fill([2, 1], EOS_ID), tf.fill([2, 2], 7)], axis=1)  # junk after EOS
    assert [t.decode() for t in tokenizer.detokenize(padded).numpy()] == SENTENCES


def test_masked_smoothed_loss_matches_keras():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 4, 9)), tf.float32)
    labels = tf.constant([[5, 6, 0, 0], [1, 2, 3, 4]])
    loss_sum, correct, count = masked_loss_and_accuracy(labels, logits, smoothing=0.1)
    keras = tf.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, reduction="none")
    per_token = keras(tf.one_hot(labels, 9), logits).numpy()
    mask = labels.numpy() != 0
    assert float(count) == 6
    np.testing.assert_allclose(float(loss_sum), per_token[mask].sum(), rtol=1e-5)
    assert float(correct) == (np.argmax(logits.numpy(), -1) == labels.numpy())[mask].sum()


def test_schedule_warms_up_then_decays():
    schedule = InverseSqrtSchedule(dim=256, warmup_steps=100)
    values = [float(schedule(s)) for s in (0, 49, 99, 399)]
    assert values[0] < values[1] < values[2] and values[3] == pytest.approx(values[2] / 2, rel=0.01)
    assert values[2] == pytest.approx(256 ** -0.5 * 100 ** -0.5, rel=1e-6)


def test_dictionary_baseline_learns_word_pairs(pairs):
    translate = dictionary_baseline(pairs[:5000])
    assert translate("Gott sprach: Licht") == "God said : light"


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="max_length"):
        Seq2SeqConfig(max_length=600).validate()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("seq2seq") / "run"
    first = train_seq2seq(tiny_config(run_dir, max_steps=20, test_eval=False), verbose=0)
    second = train_seq2seq(tiny_config(run_dir, max_steps=40), verbose=0)  # resumes from the step-20 checkpoint
    return run_dir, first, second


def test_training_smoke_loss_goes_down_and_resumes(trained):
    run_dir, first, second = trained
    assert first["steps"] == 20 and first["resumed_from_step"] is None
    assert second["steps"] == 40 and second["resumed_from_step"] == 20
    losses = [row["loss"] for row in first["train_history"] + second["train_history"]]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5, losses
    test = second["test"]
    assert test["pairs"] == 12 and 0 <= test["bleu_beam"] <= 100
    assert test["baseline_dictionary_bleu"] > test["baseline_copy_source_bleu"]
    assert {"train", "eval"} <= {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "report.json").read_text())["steps"] == 40
    with pytest.raises(ConfigError, match="vocab_size"):  # a changed model/data config never resumes silently
        train_seq2seq(tiny_config(run_dir, vocab_size=300), verbose=0)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from moatkit.models.seq2seq.export import Seq2SeqExportConfig, export_translator

    run_dir, _, _ = trained
    repo = tmp_path_factory.mktemp("repo")
    info = export_translator(Seq2SeqExportConfig(model_dir=str(run_dir / "model"), repo=str(repo), name="translate",
                                                 max_length=16))
    loaded = tf.saved_model.load(info["version_dir"]).signatures["serving_default"]
    return repo, info, loaded(text=tf.constant(SENTENCES))["translation"].numpy()


def test_export_takes_raw_strings(exported):
    repo, info, translations = exported
    assert info["version"] == 1 and info["version_dir"] == str(repo / "translate" / "1")
    assert (Path(info["version_dir"]) / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert translations.shape == (2,) and translations.dtype == object


@pytest.mark.slow
def test_export_serves_the_same_translations_over_rest_and_grpc(exported):
    """moat-model-server is a fresh process: it must reload the SavedModel and answer exactly as in-process."""
    from moatkit.serving import client
    from moatkit.serving.process import ServerProcess

    repo, _, translations = exported
    with ServerProcess(model_name="translate", model_base_path=repo / "translate") as server:
        client.wait_until_available("translate", rest=server.rest_address, timeout=120)
        rest = client.rest_predict(server.rest_address, "translate", SENTENCES)["predictions"]
        grpc = client.grpc_predict(server.grpc_address, "translate", {"text": np.array(SENTENCES, dtype=object)})
    expected = [t.decode() for t in translations]
    assert rest == expected
    assert [t.decode() for t in grpc["translation"]] == expected


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run(trained, tmp_path):
    run_dir, _, _ = trained
    (tmp_path / "straight" / "model").mkdir(parents=True)
    for name in ("source_vocab.txt", "target_vocab.txt"):  # the same vocabularies (training them may break ties
        shutil.copy(run_dir / "model" / name, tmp_path / "straight" / "model" / name)  # differently)
    straight = train_seq2seq(tiny_config(tmp_path / "straight", max_steps=40), verbose=0)
    assert [r["loss"] for r in straight["train_history"]] == pytest.approx(
        [r["loss"] for r in trained[1]["train_history"] + trained[2]["train_history"]], abs=1e-4)


def test_cli_train_seq2seq_help_and_bad_key(capsys):
    from moatkit.app.cli import build_parser, main

    help_text = build_parser()._subparsers._group_actions[0].choices["train-seq2seq"].format_help()
    assert "--export REPO" in help_text and "BLEU" in help_text
    assert main(["train-seq2seq", "--set", "model.dim=30"]) == 2
    assert "num_heads" in capsys.readouterr().err
