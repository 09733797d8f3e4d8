"""BERT pretraining examples: documents → sentences → sequences → masked-LM (+ NSP / SOP) TFRecord shards.

The recipe of Devlin et al. (2019), streaming: documents are read `chunk_documents` at a time (random "next"
sentences come from the same chunk), turned into sequences of up to `max_length` tokens (`short_seq_prob` of them
shorter), masked (15 %: 80 % [MASK] / 10 % random token / 10 % unchanged; optionally whole words) `duplication_factor`
times with different masks, shuffled within the chunk and written as tf.train.Example shards in Google's BERT
feature layout. With `masking="dynamic"` the shards keep the unmasked ids and `pretraining_dataset` masks them
anew every epoch in tf.data (RoBERTa). The output dir holds the shards, vocab.txt, manifest.json and report.json.

This module writes the examples; the steps before them are in pretraining_sequences (documents → sequences) and
pretraining_masking, the reading side in pretraining_dataset (tf.data). Their public names are importable here.

Labels: next_sentence_labels is 1 when segment B is a random sentence (NSP) or when the two segments were swapped
(sentence-order prediction, ALBERT); 0 otherwise and for `pair_task="none"`.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import random
import time
from pathlib import Path

import numpy as np

from moatkit.data.core.errors import DataError
from moatkit.data.dataset import read_manifest, sha256_file
from moatkit.data.pretraining_config import FEATURES, FORMAT, MANIFEST, SHARD_GLOB, PretrainingConfig
from moatkit.data.pretraining_dataset import pretraining_dataset, read_examples_manifest
from moatkit.data.pretraining_masking import VocabTables, dynamic_mask, mask_sequence, read_vocab
from moatkit.data.pretraining_sequences import document_sequences, iter_documents
from moatkit.data.tokenizer import load_tokenizer

__all__ = ["FEATURES", "FORMAT", "MANIFEST", "SHARD_GLOB", "PretrainingConfig", "VocabTables",
           "build_pretraining_examples", "document_sequences", "dynamic_mask", "iter_documents", "mask_sequence",
           "pretraining_dataset", "read_examples_manifest", "read_vocab"]


# === Writing ===

def _int_feature(values):
    import tensorflow as tf
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _example(a: list[int], b: list[int], label: int, *, tables: VocabTables, config: PretrainingConfig,
             rng: np.random.Generator, stats: collections.Counter) -> bytes:
    import tensorflow as tf

    tokens = [tables.cls_id] + a + [tables.sep_id] + ((b + [tables.sep_id]) if b else [])
    segments = [0] * (len(a) + 2) + [1] * (len(b) + 1 if b else 0)
    ids = np.array(tokens, np.int64)
    stats["examples"] += 1
    stats["tokens"] += len(tokens)
    stats["next_sentence_label_1"] += label
    pad = config.max_length - len(tokens)
    features = {"input_mask": _int_feature([1] * len(tokens) + [0] * pad),
                "segment_ids": _int_feature(segments + [0] * pad),
                "next_sentence_labels": _int_feature([label])}
    if config.masking == "static":
        ids, positions, labels, counts = mask_sequence(ids, tables=tables, config=config, rng=rng)
        stats.update(counts)
        fill = config.max_predictions - len(positions)
        features.update(masked_lm_positions=_int_feature(list(positions) + [0] * fill),
                        masked_lm_ids=_int_feature(list(labels) + [0] * fill),
                        masked_lm_weights=tf.train.Feature(float_list=tf.train.FloatList(
                            value=[1.0] * len(positions) + [0.0] * fill)))
    else:
        stats["candidates"] += int((~tables.special[ids]).sum())
    features["input_ids"] = _int_feature(list(ids) + [tables.pad_id] * pad)
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


class _ShardWriter:
    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size, self.shards, self._writer, self._count = out, shard_size, [], None, 0

    def write(self, record: bytes) -> None:
        import tensorflow as tf
        if self._writer is None:
            name = f"examples-{len(self.shards):05d}.tfrecord"
            self._writer = tf.io.TFRecordWriter(str(self.out / name))
            self.shards.append({"file": name, "examples": 0})
        self._writer.write(record)
        self.shards[-1]["examples"] += 1
        if self.shards[-1]["examples"] >= self.shard_size:
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.shards[-1]["sha256"] = sha256_file(self.out / self.shards[-1]["file"])


class _ExampleBuilder:
    """Chunks of documents → tokenized, packed into sequences, shuffled within the chunk, masked, written."""

    def __init__(self, out: Path, config: PretrainingConfig, *, tokenizer, tables: VocabTables):
        self.config, self.tokenizer, self.tables = config, tokenizer, tables
        self.rng = random.Random(config.seed)
        self.np_rng = np.random.default_rng(config.seed)
        self.stats: collections.Counter = collections.Counter()
        self.dropped: list[dict] = []
        self.writer = _ShardWriter(out, config.shard_size)

    def add(self, chunk: list[dict]) -> None:
        documents = self._tokenized(chunk)
        sequences = []
        for _ in range(self.config.duplication_factor):
            for index in range(len(documents)):
                sequences.extend(document_sequences(index, documents, self.config, self.rng, self.stats,
                                                    continuation=self.tables.continuation))
        self.rng.shuffle(sequences)
        for a, b, label in sequences:
            self.writer.write(_example(a, b, label, tables=self.tables, config=self.config, rng=self.np_rng,
                                       stats=self.stats))

    def _tokenized(self, chunk: list[dict]) -> list[list[list[int]]]:
        """The chunk's documents as token ids per sentence, those without any token dropped."""
        flat = [s for doc in chunk for s in doc["sentences"]]
        encoded = iter(self.tokenizer(flat, add_special_tokens=False)["input_ids"]) if flat else iter(())
        documents, used = [], []
        for doc in chunk:
            sentences = [ids for ids in (next(encoded) for _ in doc["sentences"]) if ids]
            if not sentences:  # e.g. only control characters: nothing for the model to read
                self.dropped.extend({"id": rid, "reason": "no-tokens"} for rid in doc["ids"])
                continue
            documents.append(sentences)
            used.append(doc)
        self.stats["records_used"] += sum(len(doc["ids"]) for doc in used)
        self.stats["documents"] += len(documents)
        self.stats["sentences"] += sum(len(d) for d in documents)
        self.stats["source_tokens"] += sum(len(s) for d in documents for s in d)
        return documents


def build_pretraining_examples(data_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path,
                               config: PretrainingConfig) -> dict:
    """Writes the TFRecord shards, vocab.txt, manifest.json and report.json into out_dir; returns the report."""
    config.validate()
    source_manifest = read_manifest(data_dir)
    importlib.import_module("tensorflow")  # imported before the clock starts

    tokenizer = load_tokenizer(tokenizer_dir)
    vocab = read_vocab(Path(tokenizer_dir) / "vocab.txt")
    tables = VocabTables.from_vocab(vocab)
    out = _emptied_output_dir(out_dir)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")

    start = time.perf_counter()
    builder = _ExampleBuilder(out, config, tokenizer=tokenizer, tables=tables)
    records_in = _build_in_chunks(data_dir, config, builder=builder)
    if builder.stats["examples"] == 0:
        raise DataError(f"no pretraining examples could be made from '{data_dir}'",
                        fix="check text_fields and that the records hold text; see report.json of the dataset")
    report = _report(builder.stats, builder.dropped, config=config, seconds=time.perf_counter() - start,
                     source=Path(data_dir).resolve(), tokenizer=Path(tokenizer_dir).resolve())
    assert report["records"]["in"] == records_in  # every record read is used or dropped with a reason
    manifest = _manifest(config, source_manifest=source_manifest, source_path=report["source"], tables=tables,
                         lower_case=bool(tokenizer.do_lower_case), shards=builder.writer.shards,
                         examples=report["examples"])
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def _emptied_output_dir(out_dir: str | Path) -> Path:
    """out_dir, created, without the shards of an earlier run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(SHARD_GLOB):
        old.unlink()
    return out


def _build_in_chunks(data_dir: str | Path, config: PretrainingConfig, *, builder: _ExampleBuilder) -> int:
    """Feeds the documents to `builder` `chunk_documents` at a time; returns the number of records read."""
    chunk: list[dict] = []
    records_in = 0
    for document in iter_documents(data_dir, config, builder.dropped):
        chunk.append(document)
        records_in += len(document["ids"])
        if len(chunk) >= config.chunk_documents:
            builder.add(chunk)
            chunk = []
    if chunk:
        builder.add(chunk)
    builder.writer.close()
    return records_in + sum(1 for d in builder.dropped if d["reason"] == "no-text")


def _report(stats: collections.Counter, dropped: list[dict], *, config: PretrainingConfig, seconds: float,
            source: Path, tokenizer: Path) -> dict:
    examples = stats["examples"]
    reasons = collections.Counter(d["reason"] for d in dropped)
    return {
        "source": str(source), "tokenizer": str(tokenizer),
        "config": dataclasses.asdict(config),
        "records": {"in": stats["records_used"] + len(dropped), "used": stats["records_used"],
                    "dropped": len(dropped), "dropped_by_reason": dict(reasons)},
        "documents": stats["documents"], "sentences": stats["sentences"],
        "sentences_split": stats["sentences_split"], "source_tokens": stats["source_tokens"],
        "tokens_placed": stats["tokens_placed"],
        "examples": examples, "tokens": stats["tokens"],
        "tokens_per_example": round(stats["tokens"] / examples, 2),
        "tokens_truncated": stats["tokens_truncated"], "tokens_unusable": stats["tokens_unusable"],
        "short_sequence_fraction": round(stats["short_sequences"] / examples, 4),
        "next_sentence_label_1_fraction": round(stats["next_sentence_label_1"] / examples, 4),
        "nsp_forced_random": stats["nsp_forced_random"], "nsp_offset": stats["nsp_offset"],
        "masking": _masking_summary(stats, config), "seconds": round(seconds, 2),
        "examples_per_second": round(examples / max(seconds, 1e-9), 1),
        "dropped_records": dropped,
    }


def _masking_summary(stats: collections.Counter, config: PretrainingConfig) -> dict:
    if config.masking != "static":
        return {"dynamic": "masked in tf.data at read time (pretraining_dataset)"}
    masked = max(stats["masked"], 1)
    return {"masked_fraction": round(stats["masked"] / max(stats["candidates"], 1), 5),
            "masked_per_example": round(stats["masked"] / stats["examples"], 3),
            "replaced_mask": round(stats["replaced_mask"] / masked, 5),
            "replaced_random": round(stats["replaced_random"] / masked, 5),
            "kept": round(stats["kept"] / masked, 5)}


def _manifest(config: PretrainingConfig, *, source_manifest: dict, source_path: str, tables: VocabTables,
              lower_case: bool, shards: list[dict], examples: int) -> dict:
    return {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"name": source_manifest.get("name"), "path": source_path,
                   "license": source_manifest.get("license"), "provenance": source_manifest.get("provenance")},
        "max_length": config.max_length, "max_predictions": config.max_predictions, "masking": config.masking,
        "whole_word_masking": config.whole_word_masking, "masked_lm_prob": config.masked_lm_prob,
        "mask_token_rate": config.mask_token_rate, "random_token_rate": config.random_token_rate,
        "pair_task": config.pair_task, "vocab_size": tables.vocab_size, "lower_case": lower_case,
        "seed": config.seed, "examples": examples, "shards": shards,
    }
