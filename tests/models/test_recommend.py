"""The sequential recommender on real MovieLens 100K: data, training against baselines, export, serving."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from moatkit.data.core.errors import DataError


@pytest.fixture(scope="module")
def movielens():
    from moatkit.data.fetch import fetch
    return fetch("movielens-100k")


@pytest.fixture(scope="module")
def trained(movielens, tmp_path_factory):
    """A small SASRec (1 layer, dim 32, histories of 50) trained for 10 passes on all 943 users, exported."""
    from moatkit.models.recommend.config import RecommendConfig
    from moatkit.models.recommend.train import train_recommender

    root = tmp_path_factory.mktemp("recommend")
    config = RecommendConfig(data=str(movielens), run_dir=str(root / "run"), repo=str(root / "repo"), max_length=50,
                             dim=32, num_layers=1, num_heads=1, intermediate_dim=64, epochs=10, eval_every=5,
                             batch_size=128, learning_rate=2e-3)
    return config, train_recommender(config, verbose=0)


def test_movielens_reads_into_chronological_sequences_with_accounting(movielens):
    from moatkit.data.dataset import read_manifest
    from moatkit.data.interactions import leave_one_out, read_interactions

    manifest = read_manifest(movielens)
    assert manifest["counts"]["records"] == 100_000 and "GroupLens" in manifest["license"]
    data = read_interactions(movielens)
    assert (data.report["rows"], len(data.users)) == (100_000, 943)
    assert data.report["kept_rows"] + sum(data.report["dropped"].values()) == 100_000
    assert data.num_items == 1349 and data.titles[1] == "Toy Story"
    split = leave_one_out(data)
    assert len(split.train) == 943 and split.skipped_users == 0
    assert all(len(t) + 2 == len(s) for t, s in zip(split.train, data.sequences))
    assert np.array_equal(split.history("test")[0][-1], split.valid[0])


def test_a_user_log_file_reads_and_mistakes_name_the_fix(tmp_path):
    from moatkit.data.interactions import read_interactions

    rows = ["user,item,timestamp,title"] + [f"u{u},i{i},{100 * u + i},Film {i}" for u in range(3) for i in range(4)]
    rows += ["u9,i1,yesterday,Film 1", "u9,,5,"]
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows))
    data = read_interactions(log, min_user_interactions=2, min_item_interactions=1)
    assert (data.num_items, len(data.users), data.titles[1]) == (4, 3, "Film 0")
    assert data.report["dropped"] == {"timestamp not a number": 1, "empty user or item": 1}
    assert data.report["first_bad_line"] == 14
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\n1,2\n")
    with pytest.raises(DataError, match="lacks the column.*timestamp"):
        read_interactions(bad)


def test_evaluation_is_full_ranking_with_seen_items_excluded_and_random_ties():
    from moatkit.models.recommend.evaluate import evaluate_scores, ranks

    scores = np.array([[0, 5, 4, 3, 2.0], [0, 1, 1, 1, 1.0]])
    histories = [np.array([1]), np.array([], dtype=int)]
    rank = ranks(scores, histories, np.array([3, 2]))
    assert rank[0] == 1  # item 1 is seen, so only item 2 outranks item 3
    constant = ranks(np.ones((2000, 11)), [np.array([], dtype=int)] * 2000, np.full(2000, 5), seed=1)
    assert abs(constant.mean() - 4.5) < 0.25  # ties broken at random: chance, not the best rank
    assert evaluate_scores(scores, histories, np.array([1, 2]))["users"] == 2


def test_sasrec_beats_popularity_and_item_knn_on_held_out_users(trained):
    config, report = trained
    test = report["test"]
    assert set(test) == {"ours", "most-popular", "item-knn", "als-mf"}
    assert test["ours"]["ndcg@10"] > 1.2 * test["most-popular"]["ndcg@10"]
    assert test["ours"]["ndcg@10"] > test["item-knn"]["ndcg@10"]
    assert test["ours"]["users"] == 943 and report["split"]["items"] == 1349
    assert len(report["valid_history"]) == 2 and report["timings"]["train_windows_per_second"] > 0
    assert list(Path(config.run_dir, "eval").glob("events.*")), "validation HR/NDCG go to TensorBoard"


def test_export_equals_in_process_and_applies_the_input_policy(trained):
    import tensorflow as tf

    from moatkit.models.recommend.model import load_model
    from moatkit.models.recommend.train import predict_scores

    config, report = trained
    model, meta = load_model(report["model_dir"])
    served = tf.saved_model.load(report["export"]["path"])
    items = np.array([int(i) for i in meta["items"][1:]])
    rng = np.random.default_rng(0)
    histories = [rng.choice(np.arange(1, len(items) + 1), size=n, replace=False).astype(np.int32)
                 for n in rng.integers(1, 80, size=20)]
    scores = predict_scores(model, histories)
    padded = np.zeros((20, 80), np.int64)
    for row, h in enumerate(histories):
        padded[row, :len(h)] = items[h - 1]
        scores[row, h], scores[row, 0] = -np.inf, -np.inf
    out = served.signatures["serving_default"](history=tf.constant(padded))
    expected = items[np.argsort(-scores, axis=1, kind="stable")[:, :10] - 1]
    assert np.array_equal(out["item_ids"].numpy(), expected)
    assert not set(out["item_ids"].numpy()[0]) & set(padded[0])  # seen items filtered in the graph
    # unknown ids are ignored and counted; an empty history gets the most popular items
    odd = served.signatures["serving_default"](history=tf.constant([[items[0], 987654, 0], [0, 0, 0]], tf.int64))
    assert odd["unknown_items"].numpy().tolist() == [1, 0]
    popular = items[np.argsort(-np.array(meta["popularity"][1:]), kind="stable")[:10]]
    assert set(odd["item_ids"].numpy()[1]) == set(popular)
    with pytest.raises(tf.errors.InvalidArgumentError, match="catalogue size"):
        served.signatures["top_k"](history=tf.constant(padded[:1]), k=tf.constant(5000))


def test_served_over_rest_and_grpc_like_any_model(trained):
    from moatkit.serving.client import grpc_predict, rest_request
    from tests.serving_helpers import http, start_server

    config, report = trained
    base = f"{config.repo}/{config.model_name}"
    with start_server(model_name="recommender", model_base_path=base) as server:
        body = {"instances": [{"history": [1, 50, 181]}, {"history": [0, 0, 0]}]}
        rest = rest_request(server.rest_address, "/v1/models/recommender:predict", body)
        assert len(rest["predictions"]) == 2 and len(rest["predictions"][0]["item_ids"]) == 10
        assert not {1, 50, 181} & set(rest["predictions"][0]["item_ids"])
        grpc = grpc_predict(server.grpc_address, "recommender", {"history": np.array([[1, 50, 181]], np.int64)})
        assert grpc["item_ids"].tolist()[0] == rest["predictions"][0]["item_ids"]
        status, error = http(server.rest_address, "POST", "/v1/models/recommender:predict",
                             {"signature_name": "top_k", "inputs": {"history": [[1, 2]], "k": 100000}})
        assert status == 400 and "catalogue size" in error["error"]


def test_cli_trains_on_two_logical_cpus_in_bfloat16_survives_a_kill_and_resumes(movielens, tmp_path):
    """BERT4Rec under MirroredStrategy over 2 logical CPU devices in mixed_bfloat16, killed (SIGKILL) after its
    first evaluation period and rerun: it resumes from the checkpoint and finishes, exported."""
    sets = [f"data={movielens}", f"run_dir={tmp_path / 'run'}", f"repo={tmp_path / 'repo'}", "max_length=20",
            "dim=16", "num_layers=1", "num_heads=1", "intermediate_dim=32", "epochs=4", "eval_every=1",
            "batch_size=256", "baselines=false", "logical_cpus=2", "strategy=mirrored", "precision=mixed_bfloat16",
            "arch=bert4rec"]
    command = [sys.executable, "-m", "moatkit.app.cli", "recommend", "train", *[a for s in sets for a in ("--set", s)]]
    state = tmp_path / "run" / "checkpoints" / "state.json"
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not state.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill()
    first.wait()
    assert json.loads(state.read_text())["epoch"] < 4, "killed before it finished"
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout and "NDCG@10" in done.stdout and "exported" in done.stdout
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["resumed_after_epoch"] >= 1 and len(report["valid_history"]) == 4
    assert report["replicas"] == 2 and report["config"]["precision"] == "mixed_bfloat16"
    assert 0 < report["test"]["ours"]["hr@20"] <= 1 and report["export"]["version"] == 1
