"""The tf.data input pipeline over pretraining-example shards: batches of BERT features for a Keras model."""
from __future__ import annotations

import glob
import json
from pathlib import Path

from moatkit.data.core.errors import DataError
from moatkit.data.pretraining_config import FORMAT, MANIFEST, SHARD_GLOB, PretrainingConfig
from moatkit.data.pretraining_masking import VocabTables, dynamic_mask, read_vocab


def read_examples_manifest(pattern: str) -> tuple[list[str], dict, Path]:
    """Files matching `pattern` (a glob, or the examples dir itself) and the manifest of their dir."""
    path = Path(pattern)
    if path.is_dir():
        pattern = str(path / SHARD_GLOB)
    files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(f"no TFRecord files match '{pattern}'",
                        fix="pass the dir written by `moat data pretraining-examples` or a glob of its shards")
    root = Path(files[0]).parent
    if not (root / MANIFEST).is_file():
        raise DataError(f"'{root}' has no {MANIFEST}", fix="pass shards written by `moat data pretraining-examples`")
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise DataError(f"'{root / MANIFEST}' is not a pretraining-examples manifest "
                        f"(format {manifest.get('format')!r})",
                        fix="pass shards written by `moat data pretraining-examples`")
    return files, manifest, root


def pretraining_dataset(pattern: str, batch_size: int, *, shuffle: bool = True, seed: int | None = None,
                        repeat: bool = False, shuffle_buffer: int = 10_000, cycle_length: int = 4,
                        drop_remainder: bool = True, input_context=None):
    """Batches of BERT pretraining features from the shards, ready for a Keras MLM(+NSP) model.

    Yields dicts: input_ids, input_mask, segment_ids (batch, max_length) int32; masked_lm_positions, masked_lm_ids
    (batch, max_predictions) int32; masked_lm_weights (batch, max_predictions) float32; next_sentence_labels
    (batch,) int32. `batch_size` is global: with a tf.distribute InputContext each input pipeline reads its share of
    the files and batches per replica. Shards written with dynamic masking are masked here, anew every epoch.
    """
    import tensorflow as tf

    files, manifest, root = read_examples_manifest(pattern)
    spec = _feature_spec(manifest)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) < input_context.num_input_pipelines:
            raise DataError(f"{len(files)} shard(s) cannot feed {input_context.num_input_pipelines} input pipelines",
                            fix="write more shards: lower --set shard_size")
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(cycle_length, len(files)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        parsed["next_sentence_labels"] = parsed["next_sentence_labels"][:, 0]
        return {k: v if v.dtype == tf.float32 else tf.cast(v, tf.int32) for k, v in parsed.items()}

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if manifest["masking"] == "dynamic":
        ds = _masked_anew_every_epoch(ds, manifest=manifest, vocab_path=root / "vocab.txt", seed=seed)
    return ds.prefetch(tf.data.AUTOTUNE)


def _feature_spec(manifest: dict) -> dict:
    """The tf.train.Example features of the shards; dynamic-masking shards have no masked_lm_* features."""
    import tensorflow as tf

    length, predictions = manifest["max_length"], manifest["max_predictions"]
    spec = {"input_ids": tf.io.FixedLenFeature([length], tf.int64),
            "input_mask": tf.io.FixedLenFeature([length], tf.int64),
            "segment_ids": tf.io.FixedLenFeature([length], tf.int64),
            "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64)}
    if manifest["masking"] != "dynamic":
        spec.update(masked_lm_positions=tf.io.FixedLenFeature([predictions], tf.int64),
                    masked_lm_ids=tf.io.FixedLenFeature([predictions], tf.int64),
                    masked_lm_weights=tf.io.FixedLenFeature([predictions], tf.float32))
    return spec


def _masked_anew_every_epoch(ds, *, manifest: dict, vocab_path: Path, seed: int | None):
    import tensorflow as tf

    tables = VocabTables.from_vocab(read_vocab(vocab_path))
    config = PretrainingConfig(max_length=manifest["max_length"], max_predictions=manifest["max_predictions"],
                               masked_lm_prob=manifest["masked_lm_prob"],
                               mask_token_rate=manifest["mask_token_rate"],
                               random_token_rate=manifest["random_token_rate"],
                               whole_word_masking=manifest["whole_word_masking"])
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds)).map(
        lambda features, s: dynamic_mask(features, s, tables=tables, config=config),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
