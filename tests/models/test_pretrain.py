"""BERT pretraining on real text (MR movie-review sentences, 8 per document): the loop learns past the unigram
baseline and writes TensorBoard, report.json and an HF dir `moat finetune` loads; gradient accumulation, XLA,
MirroredStrategy over 2 logical CPUs and a 2-process MultiWorkerMirroredStrategy cluster follow the one-device loss
trajectory; mixed precision stays close to float32; a run killed with SIGKILL resumes to the uninterrupted result.

Runs that need a fresh process (logical devices, TF_CONFIG, SIGKILL) go through `python -m moatkit.app.cli pretrain`."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from moatkit.data.core.config import load_config
from moatkit.data.core.errors import ConfigError, DataError
from moatkit.data.dataset import read_records, write_dataset
from moatkit.data.pretraining import PretrainingConfig, build_pretraining_examples
from moatkit.data.tokenizer import TokenizerConfig, train_tokenizer
from moatkit.models.bert import BertConfig
from moatkit.models.pretrain import PretrainConfig, pretrain

ROOT = Path(__file__).resolve().parents[2]
TINY = BertConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def examples(tmp_path_factory, mr_dir):
    """MR sentences, 8 per document: 1,600 for training → a 1,000-piece WordPiece vocabulary → static MLM + NSP
    examples; the next 800 → held-out examples with the same vocabulary."""
    root = tmp_path_factory.mktemp("pretrain-data")
    sentences = [r["text"] for r in read_records(mr_dir)[:2400]]
    for name, part in (("docs", sentences[:1600]), ("heldout-docs", sentences[1600:])):
        docs = [{"id": f"doc-{i}", "text": " ".join(part[i:i + 8])} for i in range(0, len(part), 8)]
        write_dataset(root / name, docs, name=f"mr-{name}", provenance={"catalog": "mr"}, license="research use")
    train_tokenizer(root / "docs", root / "tok", TokenizerConfig(vocab_size=1000, reserved_tokens=0,
                                                                 parity_sample=0))
    build_pretraining_examples(root / "docs", root / "tok", root / "examples",
                               PretrainingConfig(max_length=48, max_predictions=8, shard_size=400))
    build_pretraining_examples(root / "heldout-docs", root / "tok", root / "heldout",
                               PretrainingConfig(max_length=48, max_predictions=8, seed=99))
    return root


def _config(examples, run_dir, **overrides) -> PretrainConfig:
    values = dict(data=str(examples / "examples"), model=TINY, run_dir=str(run_dir), batch_size=16, steps=12,
                  learning_rate=2e-3, warmup_ratio=0.1, log_every=2, checkpoint_every=100, histogram_every=6,
                  eval_examples=64, strategy="default", progress=False, seed=7)
    values.update(overrides)
    return PretrainConfig(**values)


def _cli(config: PretrainConfig, *extra: str, workers: int = 0, network_namespace: bool = False,
         timeout: int = 600) -> subprocess.CompletedProcess:
    sets = [f"{k}={v}" for k, v in _flat(dataclasses.asdict(config)).items() if v is not None]
    command = [sys.executable, "-m", "moatkit.app.cli", "pretrain", *sum((["--set", s] for s in sets), []), *extra]
    if workers:
        command += ["--workers", str(workers)]
    if network_namespace:  # TF's gRPC servers listen on all interfaces: keep them off the host's network
        command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "moat", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _losses(report) -> np.ndarray:
    return np.array([row["loss"] for row in report["history"]])


def _same_trajectory(report, reference, rtol: float, what: str) -> None:
    actual, expected = _losses(report), _losses(reference)
    assert len(actual) == len(expected) and np.isfinite(actual).all()
    print(f"{what}: max relative loss difference {np.max(np.abs(actual - expected) / np.abs(expected)):.2e} "
          f"over {len(actual)} logged steps (tolerance {rtol:g})")
    np.testing.assert_allclose(actual, expected, rtol=rtol)


@pytest.fixture(scope="module")
def exact_reference(examples, tmp_path_factory):
    """Dropout off: the only randomness left is the seeded data order and initialisation."""
    run_dir = tmp_path_factory.mktemp("exact") / "run"
    return pretrain(_config(examples, run_dir, model=dataclasses.replace(TINY, dropout=0.0, attention_dropout=0.0)))


def _tags(run_dir: Path) -> dict[str, set]:
    import tensorflow as tf
    tags: dict[str, set] = {}
    for events in (run_dir / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                kind = value.metadata.plugin_data.plugin_name or "other"
                tags.setdefault(kind, set()).add(value.tag)
    return tags


def test_learns_beyond_unigram_baseline_and_writes_the_run_dir(examples, tmp_path):
    from transformers import BertTokenizerFast, TFBertForSequenceClassification
    from moatkit.models.finetune import resolve_model_dir

    run_dir = tmp_path / "run"
    model = dataclasses.replace(TINY, hidden_size=64, intermediate_size=256)
    report = pretrain(_config(examples, run_dir, model=model, batch_size=32, steps=600, warmup_ratio=0.05,
                              log_every=60, histogram_every=300, eval_data=str(examples / "heldout"),
                              eval_examples=512))
    losses = _losses(report)
    print(json.dumps({k: report[k] for k in ("eval", "unigram_baseline", "timings")}))
    assert report["steps"] == 600 and len(report["history"]) == 10
    assert losses[-2:].mean() < losses[0] - 1.0, losses
    # past the unigram plateau on sentences it never saw: always "." would get ~3 % of the masked tokens
    assert report["eval"]["examples"] == 512 and report["eval"]["data"].endswith("heldout")
    assert report["eval"]["mlm_accuracy"] > 2 * report["eval"]["unigram_baseline_mlm_accuracy"], report["eval"]
    assert report["unigram_baseline"]["masked_tokens"] > 10000
    lr = [row["learning_rate"] for row in report["history"]]
    assert max(lr) == pytest.approx(2e-3, rel=0.1) and lr[-1] < 1e-4  # warm-up then linear decay to 0
    assert all(row["tokens_per_second"] > 0 and row["grad_norm"] > 0 for row in report["history"])

    tags = _tags(run_dir)
    assert {"loss", "mlm_accuracy", "sentence_accuracy", "learning_rate", "grad_norm", "tokens_per_second",
            "eval/mlm_accuracy", "eval/unigram_baseline_mlm_accuracy"} <= tags["scalars"]
    assert any("self_attention/query/kernel" in t for t in tags["histograms"])
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["eval"] == report["eval"] and not (run_dir / "checkpoints" / "ckpt-150.index").exists()

    pretrained = resolve_model_dir(str(run_dir / "pretrained"))  # what `moat finetune --set model=...` resolves
    classifier = TFBertForSequenceClassification.from_pretrained(pretrained, num_labels=2)
    tokenizer = BertTokenizerFast.from_pretrained(pretrained)
    assert tokenizer.vocab_size == report["model"]["vocab_size"] == 1000
    logits = classifier(**tokenizer(["a gripping, beautifully shot film"], return_tensors="tf")).logits
    assert logits.shape == (1, 2)


def test_gradient_accumulation_matches_one_pass(examples, exact_reference, tmp_path):
    accumulated = pretrain(_config(examples, tmp_path / "run", accumulation_steps=4,
                                   model=dataclasses.replace(TINY, dropout=0.0, attention_dropout=0.0)))
    # 4 micro-batches of 4 add up to the gradient of the batch of 16: equal up to float summation order
    _same_trajectory(accumulated, exact_reference, 1e-5, "accumulation 4 x 4 vs 16")
    assert accumulated["eval"]["mlm_accuracy"] == pytest.approx(exact_reference["eval"]["mlm_accuracy"], abs=1e-6)


@pytest.mark.slow  # ≈ 22 s; mirrored-vs-one-device parity stays in the default suite via test_distribution_precision
def test_mirrored_two_logical_cpus_matches_one_device(examples, exact_reference, tmp_path):
    config = _config(examples, tmp_path / "run", model=dataclasses.replace(TINY, dropout=0.0, attention_dropout=0.0),
                     strategy="mirrored", logical_cpus=2)
    result = _cli(config)
    assert result.returncode == 0, result.stderr[-3000:]
    mirrored = json.loads((tmp_path / "run" / "report.json").read_text())
    assert mirrored["replicas"] == 2 and mirrored["strategy"] == "MirroredStrategy"
    # same global batches (each replica takes its 8 rows of the 16); only the all-reduce's summation order differs
    _same_trajectory(mirrored, exact_reference, 1e-5, "mirrored 2 x 8 vs 16")
    assert "eval MLM accuracy" in result.stdout


@pytest.mark.slow  # three TensorFlow processes (launcher + 2 workers): 3-5 min on the loaded 2-core machine
def test_multi_worker_cluster_matches_one_device(examples, exact_reference, tmp_path):
    if not shutil.which("unshare") or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -n` (root) to keep the workers' gRPC servers in a private network namespace")
    config = _config(examples, tmp_path / "run", model=dataclasses.replace(TINY, dropout=0.0, attention_dropout=0.0),
                     checkpoint_every=6)
    result = _cli(config, workers=2, network_namespace=True)
    logs = "".join(p.read_text() for p in (tmp_path / "run" / "workers").glob("*.log"))
    assert result.returncode == 0, result.stderr[-3000:] + logs[-3000:]
    cluster = json.loads((tmp_path / "run" / "report.json").read_text())
    assert cluster["workers"] == 2 and cluster["replicas"] == 2
    assert cluster["strategy"] == "MultiWorkerMirroredStrategy"
    _same_trajectory(cluster, exact_reference, 1e-5, "2 workers x 8 vs 16")


@pytest.mark.slow  # ≈ 44 s; resume after a kill stays in the default suite via test_finetune_resume
def test_killed_run_resumes_to_the_uninterrupted_result(examples, tmp_path):
    """SIGKILL after the first checkpoint; the rerun restores model, optimizer, data position and dropout RNG."""
    config = _config(examples, tmp_path / "killed", steps=60, checkpoint_every=5, log_every=5, histogram_every=0)
    state = tmp_path / "killed" / "checkpoints" / "state.json"
    sets = [x for k, v in _flat(dataclasses.asdict(config)).items() if v is not None for x in ("--set", f"{k}={v}")]
    process = subprocess.Popen([sys.executable, "-m", "moatkit.app.cli", "pretrain", *sets], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not state.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = json.loads(state.read_text())["step"]
    assert 5 <= killed_at < 60

    reference = pretrain(dataclasses.replace(config, run_dir=str(tmp_path / "uninterrupted")))  # meanwhile: in-process
    result = _cli(config)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((tmp_path / "killed" / "report.json").read_text())
    assert resumed["resumed_from_step"] == killed_at and resumed["steps"] == 60
    # identical batches, masks and dropout draws: the trajectories agree to float rounding
    _same_trajectory(resumed, reference, 1e-5, f"killed at step {killed_at} and resumed")
    assert resumed["eval"]["loss"] == pytest.approx(reference["eval"]["loss"], rel=1e-5)


@pytest.mark.parametrize("precision,tolerance", [("mixed_bfloat16", 0.05), ("mixed_float16", 0.01)])
def test_mixed_precision_follows_float32(examples, exact_reference, tmp_path, precision, tolerance):
    report = pretrain(_config(examples, tmp_path / "run", precision=precision,
                              model=dataclasses.replace(TINY, dropout=0.0, attention_dropout=0.0)))
    # bfloat16 keeps 8 bits of mantissa, float16 11: the trajectories stay within these relative bounds
    _same_trajectory(report, exact_reference, tolerance, precision)
    if precision == "mixed_float16":
        assert all(row["loss_scale"] >= 1 for row in report["history"])  # a LossScaleOptimizer ran


def test_xla_matches_the_graph_step(examples, exact_reference, tmp_path):
    report = pretrain(_config(examples, tmp_path / "run", xla=True,
                              model=dataclasses.replace(TINY, dropout=0.0, attention_dropout=0.0)))
    _same_trajectory(report, exact_reference, 1e-4, "xla")


@pytest.mark.slow  # two timed runs; ~80 s on the loaded 2-core machine
def test_time_budget_sizes_the_schedule(examples, tmp_path):
    report = pretrain(_config(examples, tmp_path / "run", steps=None, max_minutes=0.4, calibration_steps=5,
                              log_every=1))
    history, budget = report["history"], report["budget"]
    assert budget["calibrated_at_step"] == 6 and budget["step_seconds"] > 0 and report["steps"] > 6
    # the schedule is sized to end within 24 s of training (the first step's tracing included) when a step fits
    assert budget["planned_seconds"] <= 24 + budget["step_seconds"] or report["steps"] == 7, budget
    assert all(row["learning_rate"] == 0 for row in history[:5]), history[:6]  # timed at learning rate 0
    assert history[-1]["learning_rate"] < history[5]["learning_rate"] or report["steps"] == 7
    assert all(replan["steps"] > replan["step"] for replan in budget["replans"]), budget  # re-fits end after them
    if budget["replans"]:
        assert report["steps"] == budget["replans"][-1]["steps"]


def test_a_slower_pace_shortens_the_plan_and_a_spent_budget_ends_it_next_step():
    from moatkit.models.pretrain_loop import fitting_steps

    assert fitting_steps(step=100, seconds_left=600, step_seconds=1.0, max_steps=None) == 700
    assert fitting_steps(step=100, seconds_left=600, step_seconds=1.2, max_steps=None) == 600  # steps slowed
    assert fitting_steps(step=100, seconds_left=600, step_seconds=1.0, max_steps=400) == 400  # steps cap it
    assert fitting_steps(step=100, seconds_left=-5, step_seconds=1.0, max_steps=None) == 101  # over budget
    assert fitting_steps(step=100, seconds_left=600, step_seconds=1.0, max_steps=50) == 100  # past the cap


def test_weight_decay_skips_layer_norm_and_biases(examples):
    import tensorflow as tf
    from moatkit.models.bert import BertPretrainer
    from moatkit.models.pretrain import BudgetedWarmupDecay, build_optimizer

    model = BertPretrainer(dataclasses.replace(TINY, vocab_size=1000)).build_weights()
    optimizer = build_optimizer(_config(examples, "unused"), BudgetedWarmupDecay(peak=1e-3))
    decayed = {v.name for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert decayed and all(v.name.endswith(("kernel:0", "embeddings:0")) for v in model.trainable_variables
                           if v.name in decayed)
    assert not any(("norm" in v.name or "bias" in v.name) for v in model.trainable_variables if v.name in decayed)
    assert isinstance(optimizer, tf.keras.optimizers.AdamW)


def test_config_mistakes_are_one_line_errors(examples, tmp_path):
    with pytest.raises(ConfigError, match="neither 'steps' nor 'max_minutes'"):
        load_config(PretrainConfig, None, [f"data={examples / 'examples'}", "steps=null"])
    with pytest.raises(ConfigError, match="not divisible by accumulation_steps"):
        load_config(PretrainConfig, None, ["data=x", "batch_size=10", "accumulation_steps=4"])
    with pytest.raises(ConfigError, match="model.vocab_size=5000"):
        pretrain(_config(examples, tmp_path / "a", model=dataclasses.replace(TINY, vocab_size=5000)))
    with pytest.raises(DataError, match="no TFRecord files"):
        pretrain(_config(examples, tmp_path / "b", data=str(tmp_path / "nothing")))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    with pytest.raises(DataError, match="not the vocabulary the examples were built with"):
        pretrain(_config(examples, tmp_path / "d", tokenizer=str(tmp_path / "tok")))
    pretrain(_config(examples, tmp_path / "c", steps=2))
    with pytest.raises(ConfigError, match="different config"):  # a finished run keeps no checkpoints: interrupt one
        (tmp_path / "c" / "checkpoints").mkdir()
        (tmp_path / "c" / "checkpoints" / "state.json").write_text(json.dumps({"fingerprint": "other", "step": 1}))
        pretrain(_config(examples, tmp_path / "c", steps=2))


def test_cli_help_and_print_config():
    result = subprocess.run([sys.executable, "-m", "moatkit.app.cli", "pretrain", "--help"], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0 and "--workers" in result.stdout and "--precision" in result.stdout
    shipped = load_config(PretrainConfig, ROOT / "app" / "configs" / "pretrain-small.yaml")
    assert shipped.max_minutes <= 45 and shipped.model.num_layers == 4 and shipped.model.hidden_size == 256
    in_domain = load_config(PretrainConfig, ROOT / "app" / "configs" / "pretrain-imdb.yaml")
    assert in_domain.max_minutes <= 45 and in_domain.transfer.task == "mr-polarity"


def test_transfer_check_fine_tunes_pretrained_and_random_init(exact_reference, tmp_path):
    """Both fine-tunes run on the same MR split; the random-init one really starts from fresh weights (with a
    1e-6 learning rate the pretrained run's embeddings stay put, the random run's are unrelated to them)."""
    import h5py
    from moatkit.models.transfer import TransferConfig, add_transfer_to_report

    run_dir = Path(exact_reference["config"]["run_dir"])
    config = TransferConfig(task="mr-polarity", epochs=1, learning_rate=1e-6, max_train_examples=96,
                            max_eval_examples=64)
    transfer = add_transfer_to_report(run_dir, config, verbose=0)["transfer"]
    assert json.loads((run_dir / "report.json").read_text())["transfer"] == transfer
    assert transfer["sizes"]["train"] == 96 and transfer["sizes"]["test"] == 64
    assert transfer["delta"] == pytest.approx(
        transfer["pretrained"]["test_score"] - transfer["random"]["test_score"], abs=1e-4)

    def word_embeddings(directory: Path) -> np.ndarray:
        with h5py.File(directory / "tf_model.h5") as f:
            names = []
            f.visit(lambda name: names.append(name) if "word_embeddings" in name and isinstance(f[name], h5py.Dataset)
                    else None)
            return f[names[0]][()]

    start = word_embeddings(run_dir / "pretrained")
    assert np.abs(word_embeddings(Path(transfer["pretrained"]["run_dir"]) / "model") - start).max() < 1e-3
    assert np.abs(word_embeddings(Path(transfer["random"]["run_dir"]) / "model") - start).mean() > 1e-2
    with pytest.raises(ConfigError, match="transfer.task"):
        add_transfer_to_report(run_dir, TransferConfig(), verbose=0)
    with pytest.raises(ConfigError, match="not finished"):
        add_transfer_to_report(tmp_path, config, verbose=0)
