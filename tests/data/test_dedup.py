"""Deduplication: exact and MinHash-LSH near-duplicates, clusters, label conflicts, measured quality on MR."""
import collections
import json

import pytest

from moatkit.data.core.errors import ConfigError
from moatkit.data.dataset import read_records, write_dataset
from moatkit.data.dedup import (DedupConfig, bench_dedup, deduplicate, evaluate_near_dup, exact_key, lsh_band_keys,
                                normalize, record_text, shingles, jaccard)


def _records(*texts, **fields):
    return [{"id": f"r{i}", "text": t, **{k: v[i] for k, v in fields.items()}} for i, t in enumerate(texts)]


def test_normalize_folds_case_width_punctuation_and_space():
    assert normalize("  Ｈｅｌｌｏ,\tWORLD!!  it's   fine… ") == "hello world it s fine"
    assert exact_key("The film -- a DELIGHT.") == exact_key("the film a delight")


def test_exact_duplicates_keep_the_earliest_and_preserve_order():
    records = _records("A quiet, moving film.", "Loud and dull.", "a quiet moving FILM", "Loud and dull.",
                       "Something else entirely.")
    result = deduplicate(records, DedupConfig(near=False))
    assert [r["id"] for r in result.kept] == ["r0", "r1", "r4"]
    assert [(r["id"], reason, r["meta"]["duplicate_of"]) for r, reason in result.dropped] == [
        ("r2", "exact-duplicate", "r0"), ("r3", "exact-duplicate", "r1")]
    assert result.clusters == [["r0", "r2"], ["r1", "r3"]]
    assert records[2].get("meta") is None  # inputs are not mutated


def test_near_duplicates_chain_into_one_cluster_with_reasons():
    base = "the performances are strong but the script never finds a reason for us to care about these people"
    records = _records("An unrelated sentence about cooking pasta at home tonight.",
                       base,
                       base.replace("strong", "stronng").upper(),  # typo + case: near
                       base + " at all",  # insertion: near
                       base.title() + "!")  # identical after normalisation: exact
    result = deduplicate(records, DedupConfig())
    assert [r["id"] for r in result.kept] == ["r0", "r1"]
    assert {r["id"]: (reason, r["meta"]["duplicate_of"]) for r, reason in result.dropped} == {
        "r2": ("near-duplicate", "r1"), "r3": ("near-duplicate", "r1"), "r4": ("exact-duplicate", "r1")}
    assert result.clusters == [["r1", "r2", "r3", "r4"]]
    report = result.report()
    assert report["input"] == report["kept"] + report["dropped"] == 5
    assert report["dropped_by_reason"] == {"exact-duplicate": 1, "near-duplicate": 2}


def test_label_and_score_conflicts_are_flagged_not_dropped_silently():
    records = _records("One of the best movies of the year.", "One of the best movies of the year!",
                       "A tedious mess.", "a tedious mess", "Pure joy.", "PURE JOY",
                       label=["positive", "negative", "negative", "negative", "positive", "positive"],
                       score=[2.5, -1.0, -2.0, -2.2, 3.0, 0.5])
    result = deduplicate(records, DedupConfig(score_tolerance=1.0))
    assert result.clusters == [["r0", "r1"], ["r2", "r3"], ["r4", "r5"]]
    assert result.label_conflicts == [["r0", "r1"], ["r4", "r5"]]  # labels differ; scores 3.0 vs 0.5 spread 2.5
    assert len(result.kept) + len(result.dropped) == len(records)


def test_pairs_are_duplicates_only_when_both_sides_are():
    records = [{"id": "a", "text": "Where is the station?", "text_pair": "Wo ist der Bahnhof?"},
               {"id": "b", "text": "Where is the station?", "text_pair": "Die Kirche steht am Ende der langen Straße, hinter dem alten Marktplatz."},
               {"id": "c", "text": "where is the station", "text_pair": "wo ist der bahnhof"}]
    result = deduplicate(records, DedupConfig())
    assert [r["id"] for r in result.kept] == ["a", "b"] and result.clusters == [["a", "c"]]
    assert record_text(records[0]) == "Where is the station?\nWo ist der Bahnhof?"


def test_band_keys_are_deterministic_and_match_the_local_candidates(mr_dir):
    config = DedupConfig()
    texts = [r["text"] for r in read_records(mr_dir)[:400]]
    texts += [t.replace(" the ", " a ", 1) for t in texts[:40]]
    keys = [lsh_band_keys(t, config) for t in texts]
    assert keys == [lsh_band_keys(t, config) for t in texts]  # same seed, same keys (no process-salted hash)
    assert len(keys[0]) == 25 and len(set(keys[0])) == 25  # bands from datasketch's optimum for 0.5 / 128
    buckets = collections.defaultdict(set)
    for i, row in enumerate(keys):
        for key in row:
            buckets[key].add(i)
    banded = {(a, b) for ids in buckets.values() for a in ids for b in ids if a < b}
    verified = {(a, b) for a, b in banded
                if jaccard(shingles(texts[a], config), shingles(texts[b], config)) >= config.threshold}
    result = deduplicate([{"id": str(i), "text": t} for i, t in enumerate(texts)], config)
    local = {tuple(sorted((int(a), int(b)))) for cluster in result.clusters for a in cluster for b in cluster if a != b}
    assert verified and verified <= local  # every verified band pair is clustered by the MinHashLSH path
    assert result.stats["near_verified"] == len(verified) - sum(
        exact_key(texts[a]) == exact_key(texts[b]) for a, b in verified)


def test_invalid_config_names_the_field():
    for bad, field in [(dict(threshold=1.5), "threshold"), (dict(exact=False, near=False), "exact"),
                       (dict(bands=40, rows=5), "bands"), (dict(num_perm=1), "num_perm")]:
        with pytest.raises(ConfigError, match=field):
            deduplicate(_records("a b c"), DedupConfig(**bad))


def test_near_dup_recall_and_precision_on_planted_mr_edits(mr_dir):
    """500 MR sentences with 1-3 planted edits (word insert/delete, case, punctuation, typo) among 1,500 untouched
    ones; the defaults (char 5-grams, Jaccard >= 0.5, 128 permutations) must find the pairs and little else."""
    texts = [r["text"] for r in read_records(mr_dir)]
    scores = evaluate_near_dup(texts, DedupConfig(), planted=500, negatives=1500, seed=0)
    assert scores["planted_pairs"] == 500
    assert scores["recall"] >= 0.9 and scores["precision"] >= 0.95, scores
    harder = evaluate_near_dup(texts, DedupConfig(), planted=300, negatives=900, max_edits=5, seed=1)
    assert harder["recall"] >= 0.9 and harder["precision"] >= 0.95, harder


def test_cli_dedup_writes_an_accounted_dataset_dir(tmp_path, mr_dir, capsys):
    from moatkit.app.cli import main

    source = read_records(mr_dir)[:300]
    planted = [{**source[i], "id": f"copy-{i}", "text": source[i]["text"].upper() + " !!"} for i in range(0, 60, 3)]
    planted += [{**source[i], "id": f"edit-{i}", "text": source[i]["text"].replace(" ", "  ").replace("e", "é", 1),
                 "label": "negative" if source[i]["label"] == "positive" else "positive"} for i in range(1, 40, 4)]
    write_dataset(tmp_path / "in", source + planted, name="mr-sample", provenance={"test": True}, license="test",
                  shard_size=200)
    assert main(["data", "dedup", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--set", "eval_sample=200"]) == 0
    line = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["input"] == 330 == report["kept"] + report["dropped"]
    assert report["kept"] == len(read_records(tmp_path / "out", verify=True))
    assert report["dropped_by_reason"]["exact-duplicate"] == 20 and report["dropped"] >= 30
    assert {d["id"] for d in report["dropped_records"]} >= {p["id"] for p in planted}
    assert all(c[0].startswith("mr-") for c in report["clusters"])
    assert len(report["label_conflicts"]) >= 10 and line["label_conflicts"] == len(report["label_conflicts"])
    assert report["near_dup_eval"]["planted_pairs"] == 50 and report["near_dup_eval"]["recall"] >= 0.9
    assert main(["data", "dedup", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_bench_dedup_reports_throughput(mr_dir):
    numbers = bench_dedup([r["text"] for r in read_records(mr_dir)[:1000]])
    assert numbers["docs"] == 1000 and numbers["docs_per_s"] > 0 and numbers["mb"] > 0.05
    assert numbers["kept"] + numbers["dropped"] == 1000
