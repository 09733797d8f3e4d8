"""The answer index (brute force, hybrid, ScaNN, save/load) and the answer / clarify / hand-off policy, on small
exact inputs."""
import importlib.util

import numpy as np
import pytest

from moatkit.app.support.index import AnswerIndex, index_keys
from moatkit.app.support.kb import Entry
from moatkit.app.support.policy import Policy, auroc, false_accept_at_recall, features, fit_policy
from moatkit.data.core.errors import DataError


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_an_entry_scores_as_its_best_key_and_hybrid_adds_bm25():
    # entry 0 has two keys; its second is the one nearest the query
    keys = unit([[1, 0, 0], [0, 1, 0], [0, 0.8, 0.6]])
    index = AnswerIndex(keys, np.array([0, 1, 0]), ["answer", "answer", "question"],
                        answers=["pickle files store objects", "threads share memory"])
    query = unit([[0, 0.6, 0.8]])
    top, scores, cosine = index.search(query, k=2)
    assert top.tolist() == [[0, 1]]
    np.testing.assert_allclose(scores[0], [0.96, 0.6], atol=1e-6)
    hybrid = AnswerIndex(keys, np.array([0, 1, 0]), ["answer", "answer", "question"], hybrid_weight=0.5,
                         answers=["pickle files store objects", "threads share memory"])
    top, scores, cosine = hybrid.search(query, ["do threads share memory"], k=2)
    assert top.tolist() == [[1, 0]]  # BM25 (row maximum = 1 for entry 1) outweighs the cosine gap
    np.testing.assert_allclose(scores[0], [1.1, 0.96], atol=1e-6)
    np.testing.assert_allclose(cosine[0], [0.6, 0.96], atol=1e-6)


def test_every_entry_needs_a_key_and_save_load_round_trips(tmp_path):
    with pytest.raises(DataError, match="at least one key"):
        AnswerIndex(unit([[1, 0]]), np.array([1]), ["answer"], answers=["a", "b"])
    index = AnswerIndex(unit([[1, 0], [0, 1]]), np.array([1, 0]), ["answer", "question"], answers=["a", "b"],
                        hybrid_weight=0.1)
    index.save(tmp_path)
    loaded = AnswerIndex.load(tmp_path, ["a", "b"])
    assert loaded.hybrid_weight == 0.1 and loaded.kinds == index.kinds
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    with pytest.raises(DataError, match="moat support build"):
        AnswerIndex.load(tmp_path / "missing", ["a"])


def test_index_keys_hold_out_questions_not_in_allowed():
    entries = [Entry("a", "Q a?", "A a.", paraphrases=("P a",)), Entry("b", "Q b?", "A b.")]
    texts, owners, kinds = index_keys(entries, allowed_questions={"b"})
    assert list(zip(texts, owners, kinds)) == [("A a.", 0, "answer"), ("P a", 0, "paraphrase"),
                                               ("A b.", 1, "answer"), ("Q b?", 1, "question")]


@pytest.mark.skipif(importlib.util.find_spec("scann") is None, reason="scann is not installed (Linux x86-64 wheels)")
def test_scann_finds_what_brute_force_finds_on_clustered_keys():
    rng = np.random.default_rng(0)
    centers = unit(rng.normal(size=(50, 32)))
    keys = unit(centers[rng.integers(0, 50, 5000)] + rng.normal(size=(5000, 32)) * 0.1)
    owners, answers = np.arange(5000) // 2, [""] * 2500  # two keys per entry
    queries = unit(keys[rng.integers(0, 5000, 50)] + rng.normal(size=(50, 32)) * 0.05)
    brute = AnswerIndex(keys, owners, ["answer"] * 5000, answers=answers, backend="brute").search(queries, k=5)
    scann = AnswerIndex(keys, owners, ["answer"] * 5000, answers=answers, backend="scann").search(queries, k=5)
    assert np.mean(scann[0][:, 0] == brute[0][:, 0]) >= 0.95
    agree = scann[0][:, 0] == brute[0][:, 0]
    np.testing.assert_allclose(scann[1][agree, 0], brute[1][agree, 0], atol=1e-3)  # exact re-ranking


def test_policy_fit_meets_its_dev_targets_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    in_scores = np.sort(rng.uniform(0.5, 0.9, size=(200, 3)), axis=1)[:, ::-1]
    out_scores = np.sort(rng.uniform(0.1, 0.55, size=(300, 3)), axis=1)[:, ::-1]
    in_feats, out_feats = features(in_scores, rng.uniform(0.5, 1, 200)), features(out_scores, rng.uniform(0.2, 0.9, 300))
    correct = in_feats[:, 1] > 0.05  # wide margins are right answers
    policy = fit_policy(in_feats, correct, out_feats, in_scope_recall=0.95, answer_precision=0.9)
    actions, p_in = policy.decide(in_feats)
    assert np.mean(np.asarray(actions) != "handoff") >= 0.95
    direct = np.asarray(actions) == "answer"
    assert correct[direct].mean() >= 0.9 and 0 < policy.clarify_below <= 0.06
    assert auroc(p_in, policy.in_scope(out_feats)) > 0.95
    assert false_accept_at_recall(p_in, policy.in_scope(out_feats), 0.95) < 0.2
    policy.save(tmp_path)
    again = Policy.load(tmp_path)
    assert again.decide(in_feats)[0] == actions and again.curves["handoff"]


def test_policy_decides_by_threshold_then_margin():
    policy = Policy(weights=[10.0, 0.0], bias=-5.0, handoff_below=0.5, clarify_below=0.05)
    feats = features(np.array([[0.9, 0.5], [0.9, 0.88], [0.2, 0.1]]), None)
    actions, p_in = policy.decide(feats)
    assert actions == ["answer", "clarify", "handoff"]
    np.testing.assert_allclose(p_in, 1 / (1 + np.exp(-(10 * np.array([0.9, 0.9, 0.2]) - 5))))
