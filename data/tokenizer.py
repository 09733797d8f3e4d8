"""Train a BERT-compatible WordPiece vocabulary on a dataset dir (HF `tokenizers`).

The tokenizer dir holds vocab.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json (written by
`BertTokenizerFast.save_pretrained`, so `from_pretrained(dir)` loads it) plus report.json. Ids follow the original
BERT layout: [PAD]=0, [unused0..] reserved slots, then [UNK] [CLS] [SEP] [MASK] (100..103 with the default 99 reserved
slots), then the learned pieces. The same vocab.txt drives the in-graph tokenizer used for export
(serving/text_tokenizer.py); `in_graph_parity` measures that both give identical ids.
"""
from __future__ import annotations


import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Iterable, Iterator

from moatkit.data.core.errors import ConfigError, DataError, ModelError
from moatkit.data.dataset import iter_records, read_manifest

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
HF_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclasses.dataclass
class TokenizerConfig:
    vocab_size: int = 30522  # total ids, specials and reserved slots included (BERT-base uses 30,522)
    lower_case: bool = True  # uncased: lower-case + strip accents; cased: neither (the two modes the in-graph op has)
    min_frequency: int = 2  # a merge must occur this often to enter the vocab
    limit_alphabet: int = 1000  # most frequent single characters kept; rarer ones become [UNK]
    reserved_tokens: int = 99  # [unusedN] slots between [PAD] and [UNK], free for domain tokens later
    max_length: int = 512  # model_max_length written to tokenizer_config.json
    text_fields: list[str] = dataclasses.field(default_factory=lambda: ["text", "text_pair"])
    max_records: int | None = None  # train on the first N records only
    parity_sample: int = 2000  # texts checked against the in-graph tokenizer after training (0: skip)

    def validate(self):
        floor = len(SPECIAL_TOKENS) + self.reserved_tokens + 100
        if self.vocab_size < floor:
            raise ConfigError(f"vocab_size={self.vocab_size} leaves no room for learned pieces",
                              fix=f"use vocab_size >= {floor} or fewer reserved_tokens")
        if self.min_frequency < 1 or self.limit_alphabet < 1 or self.reserved_tokens < 0:
            raise ConfigError("min_frequency and limit_alphabet must be >= 1 and reserved_tokens >= 0",
                              fix="e.g. --set min_frequency=2")
        if not self.text_fields:
            raise ConfigError("text_fields is empty", fix="--set text_fields=[text]")
        if self.max_records is not None and self.max_records < 1:
            raise ConfigError(f"max_records={self.max_records} must be >= 1 or null", fix="--set max_records=null")


def record_texts(records: Iterable[dict], fields: list[str]) -> Iterator[str]:
    for record in records:
        for field in fields:
            value = record.get(field)
            if isinstance(value, str) and value.strip():
                yield value


def _bert_layout(learned: list[str], reserved: int) -> list[str]:
    """[PAD] [unused0..] [UNK] [CLS] [SEP] [MASK] learned…: the id layout of Google's BERT vocabularies."""
    return (["[PAD]"] + [f"[unused{i}]" for i in range(reserved)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            + [t for t in learned if t not in SPECIAL_TOKENS])


def train_tokenizer(data_dir: str | Path, out_dir: str | Path, config: TokenizerConfig) -> dict:
    """Trains WordPiece on the dataset's text fields, writes the tokenizer dir and returns its report."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    config.validate()
    manifest = read_manifest(data_dir)
    start = time.perf_counter()
    stats = {"records": 0, "texts": 0, "characters": 0}

    def texts() -> Iterator[str]:
        for n, record in enumerate(iter_records(data_dir, verify=True)):
            if config.max_records is not None and n >= config.max_records:
                return
            stats["records"] += 1
            for text in record_texts([record], config.text_fields):
                stats["texts"] += 1
                stats["characters"] += len(text)
                yield text

    trainer_side = BertWordPieceTokenizer(lowercase=config.lower_case, strip_accents=config.lower_case,
                                          clean_text=True, handle_chinese_chars=True)
    trainer_side.train_from_iterator(texts(), vocab_size=config.vocab_size - config.reserved_tokens,
                                     min_frequency=config.min_frequency, limit_alphabet=config.limit_alphabet,
                                     special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    if stats["texts"] == 0:
        raise DataError(f"dataset '{data_dir}' has no text in fields {config.text_fields}",
                        fix="check --set text_fields=[...] against the dataset's schema in manifest.json")
    learned = sorted(trainer_side.get_vocab(), key=trainer_side.get_vocab().get)
    vocab = _bert_layout(learned, config.reserved_tokens)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # Rebuilding through transformers writes the exact file set and config keys BertTokenizerFast expects.
    hf = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=config.lower_case,
                           strip_accents=config.lower_case, tokenize_chinese_chars=True,
                           model_max_length=config.max_length)
    hf.save_pretrained(str(out))
    seconds = time.perf_counter() - start

    sample = list(itertools.islice(record_texts(iter_records(data_dir), config.text_fields),
                                   max(config.parity_sample, 1000)))
    encoded = hf(sample, add_special_tokens=False)["input_ids"]
    pieces = sum(len(ids) for ids in encoded)
    words = sum(len(hf.backend_tokenizer.pre_tokenizer.pre_tokenize_str(
        hf.backend_tokenizer.normalizer.normalize_str(t))) for t in sample)
    report = {
        "source": str(Path(data_dir).resolve()), "source_name": manifest.get("name"),
        "source_license": manifest.get("license"), "config": dataclasses.asdict(config),
        "corpus": stats, "vocab_size": len(vocab),
        "learned_pieces": len(vocab) - len(SPECIAL_TOKENS) - config.reserved_tokens,
        "special_ids": {t: vocab.index(t) for t in SPECIAL_TOKENS},
        "sample": {"texts": len(sample), "pieces_per_word": round(pieces / max(words, 1), 4),
                   "unk_rate": round(sum(ids.count(hf.unk_token_id) for ids in encoded) / max(pieces, 1), 6)},
        "train_seconds": round(seconds, 2),
    }
    if len(vocab) < config.vocab_size:
        report["note"] = (f"the corpus supports only {len(vocab)} ids at min_frequency={config.min_frequency} "
                          f"(asked {config.vocab_size})")
    if config.parity_sample:
        report["in_graph_parity"] = in_graph_parity(out, sample[: config.parity_sample])
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def load_tokenizer(tokenizer_dir: str | Path):
    """The trained tokenizer as `transformers.BertTokenizerFast`."""
    from transformers import BertTokenizerFast

    path = Path(tokenizer_dir)
    missing = [name for name in ("vocab.txt", "tokenizer_config.json") if not (path / name).is_file()]
    if missing:
        raise ModelError(f"'{tokenizer_dir}' is not a tokenizer dir (missing {', '.join(missing)})",
                         fix="create one with `moat data tokenizer DATASET_DIR --out DIR`")
    return BertTokenizerFast.from_pretrained(str(path))


def in_graph_parity(tokenizer_dir: str | Path, texts: list[str], *, max_length: int = 128,
                    batch_size: int = 512, examples: int = 5) -> dict:
    """Exact-match rate of input ids between BertTokenizerFast and the export graph's FastBertTokenizer."""
    import tensorflow as tf

    from moatkit.data.text_tokenizer import InGraphBertTokenizer

    hf = load_tokenizer(tokenizer_dir)
    vocab = (Path(tokenizer_dir) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    graph = InGraphBertTokenizer(vocab=vocab, max_length=max_length, lower_case=bool(hf.do_lower_case))
    exact, mismatches = 0, []
    for begin in range(0, len(texts), batch_size):
        batch = texts[begin: begin + batch_size]
        ids, mask = graph(tf.constant(batch))
        ids, mask = ids.numpy(), mask.numpy()
        reference = hf(batch, truncation=True, max_length=max_length)["input_ids"]
        for row, text in enumerate(batch):
            ours = ids[row][mask[row] == 1].tolist()
            if ours == reference[row]:
                exact += 1
            elif len(mismatches) < examples:
                mismatches.append({"text": text, "hf": hf.convert_ids_to_tokens(reference[row]),
                                   "in_graph": hf.convert_ids_to_tokens(ours)})
    return {"texts": len(texts), "exact": exact, "rate": round(exact / max(len(texts), 1), 6),
            "max_length": max_length, "mismatches": mismatches}
