"""`moat train-seq2seq`: train the Transformer on verse-aligned translation pairs, evaluate BLEU vs. baselines.

Run dir: `train/` and `eval/` TensorBoard events (loss, accuracy, learning rate, tokens/s; dev BLEU and sample
translations as text), `checkpoints/` (tf.train.CheckpointManager; a rerun resumes from the latest one, at the
same data position), `model/` (config.json, weights, source_vocab.txt, target_vocab.txt) and `report.json`
(split sizes, BLEU of the model and of the copy-source and word-by-word dictionary baselines on the same held-out
chapters, training time, tokens/s).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import time
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ConfigError, ModelError
from moatkit.models.seq2seq.decoding import beam_search, greedy_decode
from moatkit.models.seq2seq.data import (BOS_ID, EOS_ID, PAD_ID, SubwordTokenizer, encode, load_pairs, make_dataset,
                                         split_pairs, train_vocab)
from moatkit.models.training import check_resume_keys
from moatkit.models.transformer import Transformer, TransformerConfig


@dataclasses.dataclass
class Seq2SeqConfig:
    data: str = "bible-en-de"  # catalog name or dataset dir with text/text_pair and meta.text_lang/pair_lang
    source_lang: str = "de"
    run_dir: str = "runs/translate-de-en"
    split_by: Literal["chapter", "book"] = "chapter"
    dev_fraction: float = 0.02
    test_fraction: float = 0.05
    seed: int = 0
    vocab_size: int = 4000  # per side; small vocabularies suit small corpora (Sennrich & Zhang 2019)
    max_length: int = 128  # tokens per sequence incl. BOS/EOS; longer verses are truncated (counted in the report)
    model: TransformerConfig = dataclasses.field(default_factory=lambda: TransformerConfig(
        source_vocab_size=4000, target_vocab_size=4000, dim=256, encoder_layers=3, decoder_layers=3, num_heads=4,
        intermediate_dim=1024, dropout=0.1, norm_first=True))  # pre-norm: stable with a short warm-up
    batch_tokens: int = 2048  # target tokens per batch (length-bucketed); small batches = more updates per CPU-hour
    epochs: int = 30
    max_steps: int = 0  # 0 = no step limit
    time_budget_minutes: float = 50.0  # stop training after this long (0 = no limit); test decoding follows
    warmup_steps: int = 400
    learning_rate_scale: float = 1.0  # lr = scale * dim^-0.5 * min(step^-0.5, step * warmup^-1.5) (Vaswani et al.)
    label_smoothing: float = 0.1
    beam_size: int = 4
    length_penalty: float = 0.6
    log_every: int = 50
    eval_every: int = 500  # steps between dev loss / dev BLEU (greedy, dev_bleu_sentences) / checkpoint
    dev_bleu_sentences: int = 200
    max_train_pairs: int | None = None  # for quick runs; None = all
    test_eval: bool = True  # decode the held-out test split and score the baselines after training
    max_dev_pairs: int | None = None  # dev loss on the first N dev pairs; None = all
    max_test_pairs: int | None = None  # BLEU on the first N test pairs; None = all

    def validate(self):
        self.model.validate()
        if not 0 < self.dev_fraction + self.test_fraction < 0.5:
            raise ConfigError("config keys 'dev_fraction' + 'test_fraction' must be in (0, 0.5)",
                              fix="e.g. --set dev_fraction=0.02 --set test_fraction=0.05")
        if self.max_length > self.model.max_length:
            raise ConfigError(f"config key 'max_length' ({self.max_length}) exceeds model.max_length "
                              f"({self.model.max_length})", fix="raise model.max_length or lower max_length")
        if self.vocab_size < 100:
            raise ConfigError(f"config key 'vocab_size' is {self.vocab_size}", fix="use at least 100")


class InverseSqrtSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """The Transformer paper's schedule: linear warm-up, then decay with the inverse square root of the step."""

    def __init__(self, *, dim: int, warmup_steps: int, scale: float = 1.0):
        super().__init__()
        self.dim, self.warmup_steps, self.scale = dim, warmup_steps, scale

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        return self.scale * self.dim ** -0.5 * tf.minimum(tf.math.rsqrt(step), step * self.warmup_steps ** -1.5)

    def get_config(self):
        return {"dim": self.dim, "warmup_steps": self.warmup_steps, "scale": self.scale}


def masked_loss_and_accuracy(labels, logits, *, smoothing: float):
    """Label-smoothed cross-entropy and token accuracy over non-pad labels: (sum loss, sum correct, count)."""
    logp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)  # (B, T, V)
    vocab = tf.cast(tf.shape(logits)[-1], tf.float32)
    nll = -tf.gather(logp, labels, batch_dims=2)  # (B, T)
    # smoothing spreads `smoothing` uniformly over the vocabulary (same as one-hot label smoothing, without
    # materialising a (B, T, V) one-hot)
    loss = (1.0 - smoothing) * nll - smoothing * tf.reduce_sum(logp, axis=-1) / vocab
    mask = tf.cast(labels != PAD_ID, tf.float32)
    correct = tf.cast(tf.argmax(logits, -1, output_type=labels.dtype) == labels, tf.float32)
    return tf.reduce_sum(loss * mask), tf.reduce_sum(correct * mask), tf.reduce_sum(mask)


# === Model dir ===

def save_model_dir(model_dir: Path, model: Transformer, source_vocab, target_vocab, extra: dict) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "source_vocab.txt").write_text("\n".join(source_vocab) + "\n", encoding="utf-8")
    (model_dir / "target_vocab.txt").write_text("\n".join(target_vocab) + "\n", encoding="utf-8")
    (model_dir / "config.json").write_text(json.dumps({"architecture": "moat-transformer",
                                                       "model": model.get_config(), **extra}, indent=2))
    tf.train.Checkpoint(model=model).write(str(model_dir / "weights"))


def load_model_dir(model_dir: str | Path) -> tuple[Transformer, list[str], list[str], dict]:
    model_dir = Path(model_dir)
    for name in ("config.json", "source_vocab.txt", "target_vocab.txt", "weights.index"):
        if not (model_dir / name).is_file():
            raise ModelError(f"'{model_dir}' has no {name}",
                             fix="point at the model/ dir of a `moat train-seq2seq` run")
    info = json.loads((model_dir / "config.json").read_text())
    model = Transformer(TransformerConfig(**info["model"]))
    model(model.dummy_inputs())
    tf.train.Checkpoint(model=model).read(str(model_dir / "weights")).assert_existing_objects_matched()
    vocab = [(model_dir / f"{side}_vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
             for side in ("source", "target")]
    return model, vocab[0], vocab[1], info


# === Evaluation and baselines ===

def bleu(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu
    return round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2)


@functools.lru_cache(maxsize=8)
def _decoder(model, max_length: int, beam_size: int, alpha: float):
    """One traced decode function per model and setting, so dev evaluations reuse the graph instead of re-tracing."""
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)], reduce_retracing=True)
    def decode(source):
        if beam_size > 1:
            return beam_search(model, source, beam_size=beam_size, alpha=alpha, max_length=max_length,
                               bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID)
        return greedy_decode(model, source, max_length=max_length, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID)
    return decode


def translate(model, source_tokenizer, target_tokenizer, texts: list[str], *, max_length: int, beam_size: int,
              alpha: float, batch_size: int = 32) -> list[str]:
    decode = _decoder(model, max_length, beam_size, alpha)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together
    out = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        ids, _ = encode(source_tokenizer, [texts[i] for i in index], max_length=max_length, add_bos=False)
        tokens = decode(ids.to_tensor(PAD_ID))
        for i, text in zip(index, target_tokenizer.detokenize(tokens).numpy()):
            out[i] = text.decode("utf-8")
    return out


_WORD = re.compile(r"\w+|[^\w\s]")


def dictionary_baseline(train_pairs: list[dict]):
    """Word-by-word translation with the target word that co-occurs best (Dice over aligned verses) with each source
    word; punctuation and unknown words are copied. Returns a function text → translation."""
    from scipy import sparse

    def bag(texts):
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for r, text in enumerate(texts):
            for word in set(re.findall(r"\w+", text)):
                rows.append(r)
                cols.append(vocab.setdefault(word, len(vocab)))
        matrix = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), len(vocab)))
        return matrix, vocab

    src, src_vocab = bag([p["source"] for p in train_pairs])
    tgt, tgt_vocab = bag([p["target"] for p in train_pairs])
    both = (src.T @ tgt).tocsr()  # (source words, target words) co-occurrence counts
    src_count, tgt_count = np.asarray(src.sum(0)).ravel(), np.asarray(tgt.sum(0)).ravel()
    tgt_words = np.array(sorted(tgt_vocab, key=tgt_vocab.get))
    table = {}
    for word, i in src_vocab.items():
        row = both.getrow(i)
        if row.nnz:
            dice = 2 * row.data / (src_count[i] + tgt_count[row.indices])
            table[word] = tgt_words[row.indices[int(np.argmax(dice))]]

    def translate_words(text: str) -> str:
        return " ".join(table.get(w, w) for w in _WORD.findall(text))
    return translate_words


def teacher_forced_metrics(model, dataset, *, smoothing: float) -> dict:
    totals = np.zeros(3)
    for inputs, labels in dataset:
        totals += [float(v) for v in masked_loss_and_accuracy(labels, model(inputs, training=False),
                                                              smoothing=smoothing)]
    return {"loss": totals[0] / max(totals[2], 1), "accuracy": totals[1] / max(totals[2], 1)}


# === Training ===

# keys that change the model, the vocabularies or the batches: a resumed run must keep them
RESUME_KEYS = ("data", "source_lang", "split_by", "dev_fraction", "test_fraction", "seed", "vocab_size", "max_length",
               "model", "batch_tokens", "max_train_pairs", "label_smoothing", "warmup_steps", "learning_rate_scale")


def train_seq2seq(config: Seq2SeqConfig, *, verbose: int = 1) -> dict:
    started = time.time()
    run_dir = Path(config.run_dir)
    tf.keras.utils.set_random_seed(config.seed)
    splits = load_splits(config)
    check_resume_keys(config, run_dir / "run_config.json", RESUME_KEYS)
    source_vocab, target_vocab = _vocabularies(config, run_dir / "model", splits["train"])
    run = _Run(config, run_dir, SubwordTokenizer(source_vocab), SubwordTokenizer(target_vocab), splits, verbose)
    run.train(started)
    step = int(run.optimizer.iterations.numpy())
    run.manager.save(checkpoint_number=step)
    train_wall = time.time() - started
    save_model_dir(run_dir / "model", run.model, source_vocab, target_vocab,
                   {"source_lang": config.source_lang, "max_length": config.max_length,
                    "beam_size": config.beam_size, "length_penalty": config.length_penalty})
    report = {
        "config": dataclasses.asdict(config),
        "sizes": {name: len(items) for name, items in splits.items()},
        "units": {name: len({(p["book"], p["chapter"]) for p in items}) for name, items in splits.items()},
        "truncated_train_sequences": run.truncated,
        "vocab_sizes": {"source": len(source_vocab), "target": len(target_vocab)},
        "parameters": int(sum(np.prod(v.shape) for v in run.model.trainable_variables)),
        "steps": step, "resumed_from_step": run.resumed_from,
        "train_seconds": round(run.train_seconds, 1), "wall_seconds_before_test": round(train_wall, 1),
        "train_target_tokens_per_second": round(run.target_tokens / max(run.train_seconds, 1e-9), 1),
        "train_tokens_per_second": round((run.target_tokens + run.source_tokens) / max(run.train_seconds, 1e-9), 1),
        "train_history": run.train_history, "dev_history": run.dev_history,
    }
    if config.test_eval:
        report.update(_test_report(config, run.model, run.source_tok, run.target_tok, splits, run.tensors,
                                   run.eval_writer, step))
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def load_splits(config: Seq2SeqConfig) -> dict[str, list[dict]]:
    """Train/dev/test pairs split by chapter or book, each cut to its max_*_pairs."""
    pairs = load_pairs(config.data, source_lang=config.source_lang)
    splits = split_pairs(pairs, by=config.split_by, dev_fraction=config.dev_fraction,
                         test_fraction=config.test_fraction, seed=config.seed)
    limits = {"train": config.max_train_pairs, "dev": config.max_dev_pairs, "test": config.max_test_pairs}
    return {name: items[:limits[name]] if limits[name] else items for name, items in splits.items()}


def _vocabularies(config: Seq2SeqConfig, model_dir: Path, train: list[dict]) -> tuple[list[str], list[str]]:
    """The subword vocabularies of both sides: trained on the train split, or the saved ones when resuming."""
    files = model_dir / "source_vocab.txt", model_dir / "target_vocab.txt"
    if files[0].is_file():  # resume: the vocabularies must not change
        return tuple(f.read_text(encoding="utf-8").split("\n")[:-1] for f in files)
    vocabs = (train_vocab([p["source"] for p in train], vocab_size=config.vocab_size),
              train_vocab([p["target"] for p in train], vocab_size=config.vocab_size))
    model_dir.mkdir(parents=True, exist_ok=True)
    for path, vocab in zip(files, vocabs):
        path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return vocabs


class _Run:
    """One training run: the model, optimizer and checkpoint (restored when the run dir has one), the train step,
    the dev evaluation, and the counters the report reads."""

    def __init__(self, config: Seq2SeqConfig, run_dir: Path, source_tok, target_tok, splits: dict, verbose: int):
        self.config, self.splits, self.verbose = config, splits, verbose
        self.source_tok, self.target_tok = source_tok, target_tok
        self.train_src, self.train_tgt, self.truncated = self.tensors(splits["train"])
        dev_src, dev_tgt, _ = self.tensors(splits["dev"])
        self.dev_ds = make_dataset(dev_src, dev_tgt, batch_tokens=config.batch_tokens, shuffle=False, seed=0,
                                   max_length=config.max_length)
        model_config = dataclasses.replace(config.model, source_vocab_size=source_tok.vocab_size,
                                           target_vocab_size=target_tok.vocab_size, pad_id=PAD_ID)
        self.model = Transformer(model_config)
        self.model(self.model.dummy_inputs())
        self.schedule = InverseSqrtSchedule(dim=model_config.dim, warmup_steps=config.warmup_steps,
                                            scale=config.learning_rate_scale)
        self.optimizer = tf.keras.optimizers.Adam(self.schedule, beta_1=0.9, beta_2=0.98, epsilon=1e-9)
        self.epoch = tf.Variable(0, dtype=tf.int64, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, name="step_in_epoch")
        checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, epoch=self.epoch,
                                         step_in_epoch=self.step_in_epoch)
        self.manager = tf.train.CheckpointManager(checkpoint, str(run_dir / "checkpoints"), max_to_keep=3)
        self.resumed_from = None
        if self.manager.latest_checkpoint:
            checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            self.resumed_from = int(self.optimizer.iterations.numpy())
            if verbose:
                print(f"resumed from {self.manager.latest_checkpoint} (step {self.resumed_from})")
        self.train_step = self._make_train_step()
        self.train_writer = tf.summary.create_file_writer(str(run_dir / "train"))
        self.eval_writer = tf.summary.create_file_writer(str(run_dir / "eval"))
        self.dev_history, self.train_history = [], []
        self.target_tokens = self.source_tokens = self.train_seconds = 0.0

    def tensors(self, items):
        max_length = self.config.max_length
        src, cut_s = encode(self.source_tok, [p["source"] for p in items], max_length=max_length, add_bos=False)
        tgt, cut_t = encode(self.target_tok, [p["target"] for p in items], max_length=max_length, add_bos=True)
        return src, tgt, cut_s + cut_t

    def _make_train_step(self):
        spec = ({"source": tf.TensorSpec([None, None], tf.int32), "target_in": tf.TensorSpec([None, None], tf.int32)},
                tf.TensorSpec([None, None], tf.int32))
        model, optimizer, smoothing = self.model, self.optimizer, self.config.label_smoothing

        @tf.function(input_signature=spec)
        def train_step(inputs, labels):
            with tf.GradientTape() as tape:
                logits = model(inputs, training=True)
                loss_sum, correct, count = masked_loss_and_accuracy(labels, logits, smoothing=smoothing)
                loss = loss_sum / tf.maximum(count, 1.0)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            source_count = tf.reduce_sum(tf.cast(inputs["source"] != PAD_ID, tf.float32))
            return loss, correct / tf.maximum(count, 1.0), count, source_count

        return train_step

    def train(self, started: float) -> None:
        """Epochs until config.epochs, max_steps or the time budget; resumes mid-epoch at the same batch."""
        config = self.config
        budget = config.time_budget_minutes * 60 or float("inf")
        window = []
        while int(self.epoch.numpy()) < config.epochs:
            ds = make_dataset(self.train_src, self.train_tgt, batch_tokens=config.batch_tokens, shuffle=True,
                              seed=config.seed + int(self.epoch.numpy()), max_length=config.max_length)
            for inputs, labels in ds.skip(int(self.step_in_epoch.numpy())):
                step, accuracy = self._one_step(inputs, labels, window)
                if step % config.log_every == 0:
                    self._log(step, window, accuracy)
                    window = []
                if step % config.eval_every == 0:
                    self.manager.save(checkpoint_number=step)
                    self.evaluate(step)
                if (config.max_steps and step >= config.max_steps) or time.time() - started > budget:
                    return
            self.epoch.assign_add(1)
            self.step_in_epoch.assign(0)

    def _one_step(self, inputs, labels, window: list[float]) -> tuple[int, float]:
        t0 = time.time()
        loss, accuracy, count, src_count = self.train_step(inputs, labels)
        loss = float(loss)
        self.train_seconds += time.time() - t0
        self.target_tokens += float(count)
        self.source_tokens += float(src_count)
        self.step_in_epoch.assign_add(1)
        step = int(self.optimizer.iterations.numpy())
        window.append(loss)
        if not np.isfinite(loss):
            raise ModelError(f"training loss became {loss} at step {step}",
                             fix="lower learning_rate_scale or raise warmup_steps")
        return step, float(accuracy)

    def _log(self, step: int, window: list[float], accuracy: float) -> None:
        loss, rate = float(np.mean(window)), self.target_tokens / max(self.train_seconds, 1e-9)
        self.train_history.append({"step": step, "loss": round(loss, 4)})
        with self.train_writer.as_default(step=step):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("accuracy", accuracy)
            tf.summary.scalar("learning_rate", float(self.schedule(step)))
            tf.summary.scalar("target_tokens_per_second", rate)
        if self.verbose:
            print(f"epoch {int(self.epoch.numpy())} step {step}: loss {loss:.3f} acc {accuracy:.3f} "
                  f"lr {float(self.schedule(step)):.2e} {rate:.0f} tgt tok/s", flush=True)

    def evaluate(self, step: int) -> None:
        """Dev loss and accuracy (teacher forced) and greedy BLEU on dev_bleu_sentences, with three samples."""
        config, samples = self.config, self.splits["dev"][:3]
        metrics = teacher_forced_metrics(self.model, self.dev_ds, smoothing=config.label_smoothing)
        dev = self.splits["dev"][:config.dev_bleu_sentences]
        hyps = translate(self.model, self.source_tok, self.target_tok, [p["source"] for p in dev],
                         max_length=config.max_length, beam_size=1, alpha=0.0)
        metrics["bleu_greedy"] = bleu(hyps, [p["target"] for p in dev])
        with self.eval_writer.as_default(step=step):
            for key, value in metrics.items():
                tf.summary.scalar(f"dev/{key}", value)
            lines = [f"**{p['source']}**  \n→ {h}  \n(ref: {p['target']})" for p, h in zip(samples, hyps[:3])]
            tf.summary.text("dev/samples", "\n\n".join(lines))
        self.dev_history.append({"step": step, **{k: round(float(v), 4) for k, v in metrics.items()}})
        if self.verbose:
            print(f"step {step}: dev loss {metrics['loss']:.3f} acc {metrics['accuracy']:.3f} "
                  f"BLEU(greedy, {len(dev)}) {metrics['bleu_greedy']:.2f} | {samples[0]['source']!r} → {hyps[0]!r}")


def _test_report(config, model, source_tok, target_tok, splits, tensors, eval_writer, step) -> dict:
    """The model (beam and greedy) and both baselines on the same held-out test chapters."""
    test = splits["test"]
    sources, references = [p["source"] for p in test], [p["target"] for p in test]
    t0 = time.time()
    hyps = translate(model, source_tok, target_tok, sources, max_length=config.max_length,
                     beam_size=config.beam_size, alpha=config.length_penalty)
    beam_seconds = time.time() - t0
    t0 = time.time()
    greedy = translate(model, source_tok, target_tok, sources, max_length=config.max_length, beam_size=1, alpha=0.0)
    greedy_seconds = time.time() - t0
    dictionary = dictionary_baseline(splits["train"])
    test_metrics = teacher_forced_metrics(
        model, make_dataset(*tensors(test)[:2], batch_tokens=config.batch_tokens, shuffle=False, seed=0,
                            max_length=config.max_length), smoothing=config.label_smoothing)
    report = {
        "test": {"pairs": len(test), "loss": round(test_metrics["loss"], 4),
                 "accuracy": round(test_metrics["accuracy"], 4),
                 "bleu_beam": bleu(hyps, references), "bleu_greedy": bleu(greedy, references),
                 "beam_sentences_per_second": round(len(test) / beam_seconds, 2),
                 "greedy_sentences_per_second": round(len(test) / greedy_seconds, 2),
                 "baseline_copy_source_bleu": bleu(sources, references),
                 "baseline_dictionary_bleu": bleu([dictionary(s) for s in sources], references)},
        "samples": [{"source": s, "reference": r, "translation": h} for s, r, h in zip(sources[:5], references, hyps)],
    }
    with eval_writer.as_default(step=step):
        for key in ("bleu_beam", "bleu_greedy", "baseline_copy_source_bleu", "baseline_dictionary_bleu"):
            tf.summary.scalar(f"test/{key}", report["test"][key])
    return report
