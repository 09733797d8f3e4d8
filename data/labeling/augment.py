"""Text augmentation for training sets: EDA-style operations (Wei & Zou 2019), seeded.

Operations on whole words: synonym replacement, random insertion (of a synonym of a word already in the sentence),
random swap, random deletion. Synonyms are the nearest neighbours (cosine) of whole-word tokens in MiniLM's input
embedding matrix, which is in the catalog and works offline (WordNet is not available offline in a form nltk reads).
Embedding neighbours are related words, not always synonyms: "good" neighbours "bad". Words in `protect` are never
replaced, and neighbours sharing a 4-letter prefix (movie → movies) are skipped as mere inflections.

Augmented copies keep the label and get meta.augmented_from = the original id; dev and test splits are refused,
since copies of evaluation records would inflate the scores measured on them.
"""
from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import numpy as np

from moatkit.data.core.errors import ConfigError, DataError

OPERATIONS = ("synonym", "insert", "swap", "delete")
EVAL_SPLITS = {"dev", "test", "valid", "validation", "eval", "heldout", "held-out"}
# Function words EDA leaves alone; replacing them changes grammar, not content.
STOPWORDS = frozenset("""a an the and or but if of at by for with about against between into through during before
after above below to from up down in out on off over under again then once here there when where why how all any both
each few more most other some such no nor not only own same so than too very can will just don should now is are was
were be been being have has had having do does did doing i me my we our you your he him his she her it its they them
their what which who whom this that these those am as until while because""".split())


@dataclasses.dataclass
class AugmentConfig:
    copies: int = 1                     # augmented copies per record
    operations: list[str] = dataclasses.field(default_factory=lambda: list(OPERATIONS))
    alpha: float = 0.1                  # fraction of the words each operation touches (at least one)
    neighbours: int = 5                 # synonym candidates per word
    min_similarity: float = 0.45        # cosine floor for a neighbour to count as a synonym
    protect: list[str] = dataclasses.field(default_factory=list)  # words never replaced (e.g. good, bad)
    embeddings: str = ""                # BERT dir (vocab.txt + safetensors or tf_model.h5); default: minilm-l6
    seed: int = 0

    def validate(self):
        unknown = sorted(set(self.operations) - set(OPERATIONS))
        if unknown or not self.operations:
            raise ConfigError(f"unknown augmentation operation(s) {unknown or '(none given)'}",
                              fix=f"choose from {list(OPERATIONS)}, e.g. --set operations=[swap,delete]")
        if self.copies < 1:
            raise ConfigError(f"copies={self.copies} must be at least 1", fix="e.g. --set copies=2")
        if not 0 < self.alpha <= 0.5:
            raise ConfigError(f"alpha={self.alpha} must be in (0, 0.5]", fix="EDA's default is 0.1")


def _word_embeddings(model_dir: Path) -> np.ndarray | None:
    """The input embedding matrix of a BERT dir: PyTorch-format safetensors or an HF TF (.h5) checkpoint."""
    if (model_dir / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(model_dir / "model.safetensors", framework="numpy") as handle:
            names = [n for n in handle.keys() if n.endswith("word_embeddings.weight")]
            return handle.get_tensor(names[0]) if names else None
    if (model_dir / "tf_model.h5").is_file():
        import h5py

        with h5py.File(model_dir / "tf_model.h5", "r") as handle:
            names = []
            handle.visit(lambda name: names.append(name) if name.endswith("word_embeddings/weight:0") else None)
            return handle[names[0]][()] if names else None
    return None


class EmbeddingSynonyms:
    """Nearest whole-word neighbours in a BERT input embedding matrix (one L2-normalised matmul per new word)."""

    def __init__(self, model_dir: str | Path, *, k: int = 5, min_similarity: float = 0.45):
        model_dir = Path(model_dir)
        vocab_file = model_dir / "vocab.txt"
        matrix = _word_embeddings(model_dir) if vocab_file.is_file() else None  # (vocab, hidden)
        if matrix is None:
            raise DataError(f"'{model_dir}' has no vocab.txt + model.safetensors or tf_model.h5 for synonym lookup",
                            fix="run `moat data fetch minilm-l6`, or set embeddings= a BERT dir")
        vocab = vocab_file.read_text(encoding="utf-8").split("\n")[: len(matrix)]
        ids = np.array([i for i, w in enumerate(vocab) if w.isascii() and w.isalpha() and len(w) >= 3])
        self.words = [vocab[i] for i in ids]
        self.index = {w: row for row, w in enumerate(self.words)}
        vectors = matrix[ids].astype(np.float32)
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # (words, hidden)
        self.k, self.min_similarity = k, min_similarity
        self._cache: dict[str, list[str]] = {}

    def __call__(self, word: str) -> list[str]:
        word = word.lower()
        if word not in self._cache:
            row = self.index.get(word)
            found = []
            if row is not None:
                sims = self.vectors @ self.vectors[row]
                for j in np.argsort(-sims)[1: 8 * self.k]:
                    other = self.words[j]
                    if sims[j] < self.min_similarity or len(found) == self.k:
                        break
                    if other[:4] != word[:4]:
                        found.append(other)
            self._cache[word] = found
        return self._cache[word]


# (leading whitespace, token): joining the pairs gives back the text exactly, so untouched spans keep their spacing.
_TOKEN = re.compile(r"(\s*)(\w+(?:'\w+)?|[^\w\s])")


def augment_text(text: str, operation: str, *, rng: random.Random, synonyms, alpha: float = 0.1,
                 protect: frozenset = frozenset()) -> str:
    """One EDA operation on `text`; returns the text unchanged when the operation has nothing to act on."""
    pairs = [list(m.groups()) for m in _TOKEN.finditer(text)]
    words = [i for i, (_, t) in enumerate(pairs) if t[0].isalnum()]
    count = max(1, int(round(alpha * len(words))))

    def replaceable(i):
        token = pairs[i][1]
        return token[0].isalnum() and token.lower() not in STOPWORDS | protect and bool(synonyms(token))

    if operation == "synonym":
        candidates = [i for i in words if replaceable(i)]
        for i in rng.sample(candidates, min(count, len(candidates))):
            choice = rng.choice(synonyms(pairs[i][1]))
            pairs[i][1] = choice.capitalize() if pairs[i][1][0].isupper() else choice
    elif operation == "insert":
        for _ in range(count):
            candidates = [i for i in range(len(pairs)) if replaceable(i)]
            if not candidates:
                break
            word = rng.choice(synonyms(pairs[rng.choice(candidates)][1]))
            at = rng.choice([i for i in range(len(pairs)) if pairs[i][1][0].isalnum()] + [len(pairs)])
            pairs.insert(at, [" " if at else "", word])
            if at == 0 and len(pairs) > 1:
                pairs[1][0] = " "
    elif operation == "swap":
        for _ in range(count if len(words) > 1 else 0):
            a, b = rng.sample(words, 2)
            pairs[a][1], pairs[b][1] = pairs[b][1], pairs[a][1]
    elif operation == "delete":
        if len(words) > 1:
            drop = set(rng.sample(words, min(count, len(words) - 1)))
            pairs = [p for i, p in enumerate(pairs) if i not in drop]
            if pairs:
                pairs[0][0] = ""
    else:
        raise ConfigError(f"unknown augmentation operation {operation!r}", fix=f"choose from {list(OPERATIONS)}")
    return "".join(space + token for space, token in pairs)


def augment_records(records: list[dict], config: AugmentConfig, *, synonyms=None) -> list[dict]:
    """The augmented copies (not the originals), each with the original's label and meta.augmented_from.
    Record i's copies depend only on (seed, i's id), so adding records does not change other records' copies."""
    config.validate()
    if synonyms is None and {"synonym", "insert"} & set(config.operations):
        from moatkit.data.fetch import fetch
        synonyms = EmbeddingSynonyms(config.embeddings or fetch("minilm-l6"), k=config.neighbours,
                                     min_similarity=config.min_similarity)
    protect = frozenset(w.lower() for w in config.protect)
    out = []
    for record in records:
        rng = random.Random(f"{config.seed}:{record['id']}")
        for copy in range(config.copies):
            operation = rng.choice(config.operations)
            text = augment_text(record["text"], operation, rng=rng, synonyms=synonyms, alpha=config.alpha,
                                protect=protect)
            if text == record["text"] or not text.strip():
                continue  # nothing to act on (e.g. a one-word text): a copy would only duplicate the record
            meta = {**(record.get("meta") or {}), "augmented_from": record["id"], "augmentation": operation}
            out.append({**record, "id": f"{record['id']}~aug{copy}", "text": text, "meta": meta})
    return out


def refuse_eval_split(data_dir: str | Path, manifest: dict) -> None:
    """Raises if the dataset is (derived from) a dev/test split."""
    provenance, names = manifest.get("provenance") or {}, [Path(data_dir).resolve().name, manifest.get("name", "")]
    split = provenance.get("split") if isinstance(provenance, dict) else None
    if split in EVAL_SPLITS or any(n.lower() in EVAL_SPLITS or n.lower().rsplit("-", 1)[-1] in EVAL_SPLITS
                                   for n in names):
        raise DataError(f"'{data_dir}' is a {split or 'dev/test'} split: augmenting evaluation data would leak "
                        "copies of it into scores", fix="augment the train split only (e.g. SPLITS/train)")


def run_augment(data_dir: str | Path, out_dir: str | Path, config: AugmentConfig) -> dict:
    """`moat data label augment`: writes originals + copies; report.json gets an "augmentation" section."""
    import collections

    from moatkit.data.dataset import read_manifest, read_records, write_dataset
    from moatkit.data.labeling.weak import _merge_report

    manifest = read_manifest(data_dir)
    refuse_eval_split(data_dir, manifest)
    records = read_records(data_dir)
    copies = augment_records(records, config)
    write_dataset(out_dir, records + copies, name=f"{manifest['name']}-aug", labels=manifest.get("labels"),
                  license=manifest.get("license", "unknown"),
                  provenance={"augmented": str(Path(data_dir).resolve()), "config": dataclasses.asdict(config),
                              "source": manifest.get("provenance")})
    report = {"input": len(records), "augmented": len(copies), "output": len(records) + len(copies),
              "skipped_unchanged": len(records) * config.copies - len(copies),
              "by_operation": dict(collections.Counter(c["meta"]["augmentation"] for c in copies))}
    _merge_report(out_dir, "augmentation", report)
    return report
