"""Fine-tuning tasks: which dataset, which field is the target, classification or regression."""
from __future__ import annotations

import dataclasses
from typing import Literal

from moatkit.data.core.errors import ConfigError, DataError
from moatkit.data.dataset import field_value

Kind = Literal["classification", "regression"]


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    kind: Kind
    data: str | None  # catalog name; None for the generic tasks, which need `data`
    target: str  # record field holding the label or score; dots reach into nested dicts ("meta.fine")
    description: str = ""
    epochs: int = 3  # the default recipe's budget for this task (measured runs in docs/results.md)
    learning_rate: float = 5e-5


TASKS: dict[str, Task] = {t.name: t for t in [
    # mr-polarity: the best point on dev of `moat finetune --sweep learning_rate=5e-5,1e-4 --set epochs=4` (docs/results.md)
    Task("mr-polarity", "classification", "mr", "label", "movie-review sentence polarity (binary)", 4, 1e-4),
    Task("mr-intensity", "regression", "mr", "score", "movie-review sentiment intensity, mean rating −4..+4", 3,
         1e-4),
    # trec-official: the published split (TREC-10 test questions as the test split, dev drawn from train_5500)
    Task("trec-6", "classification", "trec-official", "label", "TREC question type, 6 coarse classes", 6, 1.5e-4),
    Task("trec-50", "classification", "trec-official", "meta.fine", "TREC question type, 50 fine classes", 8,
         1.5e-4),
    Task("classification", "classification", None, "label", "any dataset dir with text and a label field"),
    Task("regression", "regression", None, "score", "any dataset dir with text and a numeric score field"),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'", fix="choose one of: " + ", ".join(TASKS))
    return TASKS[name]


def extract(records: list[dict], task: Task, target: str, where: str) -> tuple[list[str], list[str] | None, list]:
    """Returns texts, text pairs (or None) and raw targets; missing or empty values are errors, not skips."""
    texts, pairs, targets = [], [], []
    has_pairs = any("text_pair" in r for r in records)
    for record in records:
        value = field_value(record, target)
        if value is None:
            raise DataError(f"record {record.get('id')!r} in '{where}' has no '{target}' field",
                            fix=f"set target=FIELD to the {'label' if task.kind == 'classification' else 'score'} "
                                "field of your records")
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"record {record.get('id')!r} in '{where}' has an empty text",
                            fix="clean the dataset (every record needs a non-empty 'text')")
        if task.kind == "regression" and not isinstance(value, (int, float)):
            raise DataError(f"record {record.get('id')!r} in '{where}': '{target}' = {value!r} is not a number",
                            fix="regression needs a numeric score field")
        texts.append(text)
        pairs.append(record.get("text_pair") or "")
        targets.append(value if task.kind == "regression" else str(value))
    return texts, (pairs if has_pairs else None), targets
