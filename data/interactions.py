"""User–item interaction logs for recommendation: MovieLens from the catalog, or any `user,item,timestamp` file.

`read_interactions` turns either into chronological per-user item sequences over a contiguous item index
(0 is padding, items are 1..N), after a stated minimum-count filter; `leave_one_out` splits each sequence into
train / validation target / test target (the protocol of SASRec, BERT4Rec and their replications). Every input
row is accounted for: kept, or counted under the reason it was dropped.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from collections import Counter
from pathlib import Path

import numpy as np

from moatkit.data.core.errors import DataError

REQUIRED_COLUMNS = ("user", "item", "timestamp")
OPTIONAL_COLUMNS = ("title", "rating")


# === The MovieLens catalog entry ===

def parse_movielens(folder: Path) -> tuple[list[dict], list[dict]]:
    """RecBole's ml-100k atomic files (ml-100k.inter: user, item, rating, timestamp; ml-100k.item: title, year,
    genres) → one record per rating {id, text: the movie's title, meta: user, item, timestamp, rating, year,
    genres}. Every rating is an implicit interaction (the usual reading of MovieLens for next-item models)."""
    inter, items = folder / "ml-100k.inter", folder / "ml-100k.item"
    if not inter.is_file() or not items.is_file():
        raise ValueError(f"ml-100k.inter and ml-100k.item expected in {folder}")
    catalogue = {}
    for row in _atomic_rows(items):
        catalogue[row["item_id"]] = {"title": row["movie_title"], "year": row.get("release_year", ""),
                                     "genres": row.get("class", "").split()}
    kept, dropped = [], []
    for n, row in enumerate(_atomic_rows(inter)):
        item = catalogue.get(row["item_id"])
        if item is None:
            dropped.append({"id": f"ml-100k-{n}", "reason": "item missing from ml-100k.item"})
            continue
        kept.append({"id": f"ml-100k-{n}", "text": item["title"] or f"item {row['item_id']}", "source": "movielens-100k",
                     "meta": {"user": row["user_id"], "item": row["item_id"], "timestamp": int(float(row["timestamp"])),
                              "rating": float(row["rating"]), "year": item["year"], "genres": item["genres"]}})
    return kept, dropped


def _atomic_rows(path: Path):
    """RecBole's atomic files: tab-separated, header cells `name:type`."""
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8", errors="replace")), delimiter="\t")
    header = [cell.split(":")[0] for cell in next(reader)]
    for cells in reader:
        if cells:
            yield dict(zip(header, cells))


# === Reading any log ===

@dataclasses.dataclass
class Interactions:
    """Chronological item sequences per user over items 1..N (index 0 is padding)."""
    users: list[str]  # raw user id per sequence
    items: list[str]  # raw item id per index; items[0] is the padding slot ""
    titles: list[str]  # per index, "" where unknown
    sequences: list[np.ndarray]  # int32 item indices, oldest first
    report: dict  # rows read, kept, dropped by reason, filter settings

    @property
    def num_items(self) -> int:
        return len(self.items) - 1


def read_interactions(path: str | Path, *, min_user_interactions: int = 5,
                      min_item_interactions: int = 5) -> Interactions:
    """A dataset dir of interaction records (`moat data fetch movielens-100k`) or a CSV/TSV file with a header
    naming at least user, item, timestamp (title and rating optional). Items with fewer than
    `min_item_interactions` rows are dropped first, then users left with fewer than `min_user_interactions`
    (one pass, as in the SASRec preprocessing); repeated (user, item) rows are kept — re-watching is behaviour."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"interaction log '{path}' does not exist",
                        fix="pass a dataset dir (`moat data fetch movielens-100k`) or a user,item,timestamp CSV file")
    rows, report = (_rows_from_dataset(path) if path.is_dir() else _rows_from_file(path))
    item_counts = Counter(item for _, item, _, _ in rows)
    rows_kept = [r for r in rows if item_counts[r[1]] >= min_item_interactions]
    dropped = Counter({"item below min_item_interactions": len(rows) - len(rows_kept)})
    user_counts = Counter(user for user, _, _, _ in rows_kept)
    before = len(rows_kept)
    rows_kept = [r for r in rows_kept if user_counts[r[0]] >= min_user_interactions]
    dropped["user below min_user_interactions"] = before - len(rows_kept)
    titles = {item: title for _, item, _, title in rows_kept if title}
    items = sorted({item for _, item, _, _ in rows_kept}, key=_natural_key)
    index = {item: i + 1 for i, item in enumerate(items)}
    by_user: dict[str, list[tuple[int, int, int]]] = {}
    for order, (user, item, timestamp, _) in enumerate(rows_kept):
        by_user.setdefault(user, []).append((timestamp, order, index[item]))  # ties keep the file's order
    users = sorted(by_user, key=_natural_key)
    sequences = [np.array([i for _, _, i in sorted(by_user[u])], dtype=np.int32) for u in users]
    report.update({"kept_rows": len(rows_kept), "users": len(users), "items": len(items),
                   "dropped": {k: v for k, v in dropped.items() if v} | report.get("dropped", {}),
                   "min_user_interactions": min_user_interactions, "min_item_interactions": min_item_interactions})
    return Interactions(users=users, items=[""] + items, titles=[""] + [titles.get(i, "") for i in items],
                        sequences=sequences, report=report)


def _natural_key(raw: str):
    return (0, int(raw), "") if raw.lstrip("-").isdigit() else (1, 0, raw)


def _rows_from_dataset(folder: Path) -> tuple[list[tuple[str, str, int, str]], dict]:
    from moatkit.data.dataset import iter_records

    rows, missing = [], 0
    for record in iter_records(folder):
        meta = record.get("meta") or {}
        if not all(k in meta for k in REQUIRED_COLUMNS):
            missing += 1
            continue
        rows.append((str(meta["user"]), str(meta["item"]), int(meta["timestamp"]), record.get("text", "")))
    if not rows:
        raise DataError(f"'{folder}' holds no interaction records (meta.user, meta.item, meta.timestamp)",
                        fix="fetch one with `moat data fetch movielens-100k`, or pass a user,item,timestamp CSV")
    report = {"source": str(folder), "rows": len(rows) + missing}
    if missing:
        report["dropped"] = {"record without meta.user/item/timestamp": missing}
    return rows, report


def _rows_from_file(path: Path) -> tuple[list[tuple[str, str, int, str]], dict]:
    text = path.read_text(encoding="utf-8", errors="replace")
    first = text.split("\n", 1)[0]
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"'{path}' lacks the column(s) {', '.join(missing)} (header: {', '.join(header) or 'none'})",
                        fix="give the file a header line with user,item,timestamp (title and rating optional)")
    reader.fieldnames = header
    rows, bad, first_bad = [], Counter(), None
    for line, row in enumerate(reader, start=2):
        user, item, stamp = (str(row.get(c) or "").strip() for c in REQUIRED_COLUMNS)
        if not user or not item:
            first_bad = first_bad or line
            bad["empty user or item"] += 1
            continue
        try:
            timestamp = int(float(stamp))
        except ValueError:
            first_bad = first_bad or line
            bad["timestamp not a number"] += 1
            continue
        rows.append((user, item, timestamp, str(row.get("title") or "").strip()))
    if not rows:
        raise DataError(f"'{path}' has no usable interaction rows",
                        fix="each row needs a user, an item and a numeric (Unix) timestamp")
    report = {"source": str(path), "rows": len(rows) + sum(bad.values())}
    if bad:
        report["dropped"] = dict(bad)
        report["first_bad_line"] = first_bad
    return rows, report


# === Splits ===

@dataclasses.dataclass
class LeaveOneOut:
    """Per user: the history used for training, the validation target (second-last item) and the test target
    (last item). Users with fewer than 3 interactions cannot be split and are counted in `skipped_users`."""
    users: np.ndarray  # int32 indices into Interactions.users
    train: list[np.ndarray]
    valid: np.ndarray  # (U,) int32
    test: np.ndarray  # (U,) int32
    skipped_users: int

    def history(self, split: str) -> list[np.ndarray]:
        """The items a model may see when predicting `split`'s target (validation: train; test: train + valid)."""
        if split == "valid":
            return self.train
        return [np.append(t, v).astype(np.int32) for t, v in zip(self.train, self.valid)]

    def target(self, split: str) -> np.ndarray:
        return self.valid if split == "valid" else self.test


def leave_one_out(interactions: Interactions) -> LeaveOneOut:
    keep = [u for u, s in enumerate(interactions.sequences) if len(s) >= 3]
    seqs = [interactions.sequences[u] for u in keep]
    return LeaveOneOut(users=np.array(keep, dtype=np.int32), train=[s[:-2] for s in seqs],
                       valid=np.array([s[-2] for s in seqs], dtype=np.int32),
                       test=np.array([s[-1] for s in seqs], dtype=np.int32),
                       skipped_users=len(interactions.sequences) - len(keep))
