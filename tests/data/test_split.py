import collections

import pytest

from moatkit.data.dataset import read_manifest, read_records, write_dataset
from moatkit.data.split import SplitConfig, split_dataset, split_records


def _records(n=1000):
    rng_labels = ["a"] * 700 + ["b"] * 250 + ["c"] * 50
    return [{"id": str(i), "text": f"sentence number {i}", "label": rng_labels[i % 1000]} for i in range(n)]


def test_split_is_stratified_seeded_and_complete():
    records = _records()
    parts = split_records(records, SplitConfig(dev=0.1, test=0.2, seed=1))
    assert {k: len(v) for k, v in parts.items()} == {"train": 700, "dev": 100, "test": 200}
    for name, fraction in (("train", 0.7), ("dev", 0.1), ("test", 0.2)):
        counts = collections.Counter(r["label"] for r in parts[name])
        assert counts == {"a": round(700 * fraction), "b": round(250 * fraction), "c": round(50 * fraction)}
    again = split_records(records, SplitConfig(dev=0.1, test=0.2, seed=1))
    assert [r["id"] for r in again["test"]] == [r["id"] for r in parts["test"]]
    other = split_records(records, SplitConfig(dev=0.1, test=0.2, seed=2))
    assert [r["id"] for r in other["test"]] != [r["id"] for r in parts["test"]]
    assert sorted(r["id"] for p in parts.values() for r in p) == sorted(r["id"] for r in records)


def test_duplicates_never_cross_splits():
    records = _records(300)
    records += [{"id": f"dup{i}", "text": "  Sentence NUMBER " + str(i % 300) + " ", "label": "a"} for i in range(300)]
    parts = split_records(records, SplitConfig(seed=3))
    where = {}
    for name, part in parts.items():
        for r in part:
            key = " ".join(r["text"].lower().split())
            assert where.setdefault(key, name) == name


def test_split_dataset_writes_three_dataset_dirs(tmp_path):
    write_dataset(tmp_path / "src", _records(), name="toy", provenance={"made": "test"}, license="CC0")
    report = split_dataset(tmp_path / "src", tmp_path / "out", SplitConfig())
    assert report["sizes"] == {"train": 700, "dev": 100, "test": 200}
    for name, size in report["sizes"].items():
        assert read_manifest(tmp_path / "out" / name)["counts"]["records"] == size
        assert len(read_records(tmp_path / "out" / name, verify=True)) == size


def test_a_given_test_split_is_kept_and_its_repeats_leave_train(tmp_path):
    records = _records(900)
    for r in records[:100]:
        r["meta"] = {"split": "test"}
    records.append({"id": "repeat", "text": "Sentence number 7", "label": "a"})  # repeats test record 7
    write_dataset(tmp_path / "src", records, name="toy", provenance={}, license="CC0")
    report = split_dataset(tmp_path / "src", tmp_path / "out", SplitConfig(dev=0.1, test=0.3))
    assert report["sizes"] == {"train": 720, "dev": 80, "test": 100}  # test as given; dev = 10 % of the rest
    assert report["given_test_split"] == {"test": 100, "left_out_repeating_a_test_text": ["repeat"]}
    test_ids = [r["id"] for r in read_records(tmp_path / "out" / "test")]
    assert test_ids == [str(i) for i in range(100)]
    train_ids = {r["id"] for r in read_records(tmp_path / "out" / "train")}
    assert "repeat" not in train_ids and not train_ids & set(test_ids)


def test_cached_splits_follow_the_config_and_the_source(tmp_path, monkeypatch):
    from moatkit.data.split import ensure_splits

    monkeypatch.setenv("MOAT_HOME", str(tmp_path / "home"))
    write_dataset(tmp_path / "src", _records(), name="toy", provenance={}, license="CC0")
    first = ensure_splits(str(tmp_path / "src"), SplitConfig(test=0.2))
    assert ensure_splits(str(tmp_path / "src"), SplitConfig(test=0.2)) == first
    other = ensure_splits(str(tmp_path / "src"), SplitConfig(test=0.3))
    assert other != first and read_manifest(other / "test")["counts"]["records"] == 300
    write_dataset(tmp_path / "src", _records(900), name="toy", provenance={}, license="CC0")
    changed = ensure_splits(str(tmp_path / "src"), SplitConfig(test=0.2))
    assert changed != first and sum(read_manifest(changed / s)["counts"]["records"] for s in
                                    ("train", "dev", "test")) == 900


def test_bad_fractions():
    from moatkit.data.core.errors import ConfigError
    with pytest.raises(ConfigError, match="dev \\+ test < 1"):
        SplitConfig(dev=0.5, test=0.6).validate()
