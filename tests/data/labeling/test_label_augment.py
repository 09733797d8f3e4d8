"""EDA augmentation with MiniLM embedding neighbours: seeded, label-preserving, refuses evaluation splits."""
import json
import random

import pytest

from moatkit.app.cli import main
from moatkit.data.core.errors import ConfigError, DataError
from moatkit.data.dataset import read_manifest, read_records, write_dataset
from moatkit.data.labeling.augment import AugmentConfig, EmbeddingSynonyms, augment_records, augment_text


@pytest.fixture(scope="module")
def synonyms(minilm_dir):
    return EmbeddingSynonyms(minilm_dir)


def test_embedding_neighbours_are_related_words(synonyms):
    assert "hilarious" in synonyms("funny") and "film" in synonyms("movie")
    assert "movies" not in synonyms("movie")  # inflections are skipped
    assert synonyms("qwzx") == []


def test_operations_are_seeded_and_keep_untouched_text(synonyms):
    text = "A wonderfully funny movie with a terrible ending."
    for op in ("synonym", "insert", "swap", "delete"):
        a = augment_text(text, op, rng=random.Random(3), synonyms=synonyms, alpha=0.2)
        assert a == augment_text(text, op, rng=random.Random(3), synonyms=synonyms, alpha=0.2) != text
    assert augment_text(text, "delete", rng=random.Random(0), synonyms=synonyms).endswith(".")
    assert augment_text("Funny", "swap", rng=random.Random(0), synonyms=synonyms) == "Funny"
    protected = augment_text(text, "synonym", rng=random.Random(1), synonyms=synonyms, alpha=0.5,
                             protect=frozenset({"funny", "terrible"}))
    assert "funny" in protected and "terrible" in protected


def test_augment_dataset_keeps_labels_and_refuses_eval_splits(mr_dir, minilm_dir, tmp_path):
    records = read_records(mr_dir)[:40]
    train = tmp_path / "train"
    write_dataset(train, records, name="mr-train", labels=["negative", "positive"], provenance={"split": "train"},
                  license="research")
    out = tmp_path / "aug"
    args = ["data", "label", "augment", str(train), "--out", str(out), "--set", "copies=2",
            "--set", f"embeddings={minilm_dir}"]
    assert main(args) == 0
    written = read_records(out)
    copies = [r for r in written if "augmented_from" in r.get("meta", {})]
    assert len(written) == 40 + len(copies) and len(copies) >= 76
    by_id = {r["id"]: r for r in records}
    assert all(c["label"] == by_id[c["meta"]["augmented_from"]]["label"] for c in copies)
    report = json.loads((out / "report.json").read_text())["augmentation"]
    assert report["augmented"] == len(copies) and sum(report["by_operation"].values()) == len(copies)
    first = [r["text"] for r in written]
    assert main(args + ["--set", "seed=0"]) == 0 and [r["text"] for r in read_records(out)] == first  # deterministic
    assert read_manifest(out)["counts"]["records"] == len(written)

    test = tmp_path / "test"
    write_dataset(test, records, name="mr-test", labels=["negative", "positive"], provenance={"split": "test"},
                  license="research")
    with pytest.raises(DataError, match="is a test split"):
        from moatkit.data.labeling.augment import run_augment
        run_augment(test, tmp_path / "leak", AugmentConfig())
    assert main(["data", "label", "augment", str(test), "--out", str(tmp_path / "leak")]) == 2
    with pytest.raises(ConfigError, match="unknown augmentation operation"):
        augment_records(records, AugmentConfig(operations=["backtranslate"]))
