"""Task definitions and bad-input errors: each is one clear line, raised before any model is loaded."""
import pytest

from moatkit.data.core.config import load_config
from moatkit.data.core.errors import ConfigError, DataError
from moatkit.data.dataset import write_dataset
from moatkit.models.finetune import FinetuneConfig, load_task_data
from moatkit.models.tasks import get_task


def _write_splits(root, rows_by_split):
    for name, rows in rows_by_split.items():
        write_dataset(root / name, rows, name=name, provenance={}, license="CC0")
    return root


def _rows(n, label_of=lambda i: "a" if i % 2 else "b", **extra):
    return [{"id": str(i), "text": f"sentence {i}", "label": label_of(i), "score": float(i % 5) - 2, **extra}
            for i in range(n)]


def test_unknown_task_and_missing_data_are_config_errors():
    with pytest.raises(ConfigError, match="unknown task 'sst2'.*choose one of: mr-polarity, mr-intensity"):
        load_config(FinetuneConfig, None, ["task=sst2"])
    with pytest.raises(ConfigError, match="task 'classification' needs data=DIR"):
        load_config(FinetuneConfig, None, ["task=classification"])


def test_named_tasks():
    assert get_task("trec-50").target == "meta.fine" and get_task("mr-intensity").kind == "regression"


def test_custom_classification_dir_and_label_set(tmp_path):
    root = _write_splits(tmp_path, {"train": _rows(20), "dev": _rows(6), "test": _rows(6)})
    config = FinetuneConfig(task="classification", data=str(root))
    _, splits, labels = load_task_data(config, get_task("classification"))
    assert labels == ["a", "b"] and len(splits["train"][0]) == 20 and splits["train"][1] is None


def test_missing_label_field(tmp_path):
    root = _write_splits(tmp_path, {"train": _rows(20), "dev": _rows(6), "test": _rows(6)})
    config = FinetuneConfig(task="classification", data=str(root), target="intent")
    with pytest.raises(DataError, match="has no 'intent' field.*set target=FIELD"):
        load_task_data(config, get_task("classification"))


def test_label_in_test_not_seen_in_training(tmp_path):
    test = _rows(6, label_of=lambda i: "c" if i == 0 else "a")
    root = _write_splits(tmp_path, {"train": _rows(20), "dev": _rows(6), "test": test})
    with pytest.raises(DataError, match=r"the test split of .* has labels never seen in training: \['c'\]"):
        load_task_data(FinetuneConfig(task="classification", data=str(root)), get_task("classification"))


def test_empty_text(tmp_path):
    train = _rows(20)
    train[3]["text"] = "   "
    root = tmp_path / "splits"
    for name, rows in {"train": train, "dev": _rows(6), "test": _rows(6)}.items():
        (root / name).mkdir(parents=True)
        write_dataset(root / name, [r if r["text"].strip() else {**r, "text": "x"} for r in rows], name=name,
                      provenance={}, license="CC0")
    import gzip
    import json
    shard = root / "train" / "data-00000.jsonl.gz"
    with gzip.open(shard, "wt") as handle:  # a dataset written by another tool may hold empty texts
        handle.write("".join(json.dumps(r) + "\n" for r in train))
    with pytest.raises(DataError, match="record '3' .* has an empty text"):
        load_task_data(FinetuneConfig(task="classification", data=str(root)), get_task("classification"))


def test_regression_needs_numbers(tmp_path):
    train = _rows(20)
    train[0]["score"] = "high"
    root = _write_splits(tmp_path, {"train": train, "dev": _rows(6), "test": _rows(6)})
    with pytest.raises(DataError, match="'score' = 'high' is not a number"):
        load_task_data(FinetuneConfig(task="regression", data=str(root)), get_task("regression"))


def test_trec50_stratifies_by_fine_label(minilm_dir):
    from moatkit.data.fetch import fetch
    fetch("trec-official")
    _, splits, labels = load_task_data(FinetuneConfig(task="trec-50"), get_task("trec-50"))
    assert len(labels) >= 45 and all(":" in label for label in labels)
    assert set(splits["test"][2]) <= set(labels)
    assert len(splits["test"][0]) == 500  # the TREC-10 test questions, not a random split
