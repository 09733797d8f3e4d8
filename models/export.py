"""Export a fine-tuned text model into a TF Serving model repository `<repo>/<model>/<version>/`.

Signatures (all tokenize raw strings in the graph, so clients need no tokenizer):
- `serving_default` (predict): `text` (batch,) string → classifiers: `probabilities` (batch, labels) float32,
  `label_id` (batch,) int64, `label` (batch,) string; regressors: `score` (batch,) float32.
- `classify` (classifiers; TF Serving Classify API): `inputs` = serialized tf.Example with a bytes feature
  `text` → `classes` (batch, labels) string, `scores` (batch, labels) float32.
- `regress` (regressors; TF Serving Regress API): `inputs` as above → `outputs` (batch,) float32.
- `embed` (predict): `text` → `embedding` (batch, hidden) float32, the mask-averaged last hidden layer: the
  sentence representation the monitor's drift test compares (serving/monitoring).
`assets.extra/tf_serving_warmup_requests` holds PredictionLog warm-up requests.
With `tflite: true`, `model.tflite` holds `serving_default` too (raw strings in; served with --prefer_tflite_model).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Literal

import tensorflow as tf

from moatkit.data.core.errors import ConfigError, ModelError
from moatkit.data.text_tokenizer import InGraphBertTokenizer

# The file moat-model-server serves instead of the SavedModel with --prefer_tflite_model. serving/ defines it too
# (moatkit.serving.model_manager.TFLITE_FILE) because serving imports nothing from models; a test keeps them equal.
TFLITE_FILE = "model.tflite"
SOURCE_FILE = "assets.extra/moat_source.json"
REJECTED_DIR = "rejected"  # <base>/rejected/<version>: versions `moat iterate` rolled back, numbers never reused
WARMUP_TEXTS = ("a wonderful, moving film", "dull and far too long", "What is the capital of France ?")


@dataclasses.dataclass
class ExportConfig:
    model_dir: str = "runs/sentiment/model"  # a dir written by `moat finetune` (HF format + moat_task.json)
    repo: str = "artifacts/models"
    name: str = "sentiment"
    version: int | None = None  # default: one more than the newest version in the repository
    max_length: int | None = None  # default: the fine-tuning max_length
    tflite: bool = False  # also write model.tflite (serving_default only) for --prefer_tflite_model
    # model.tflite's weights: float32 as trained, or dynamic-range int8 (activations stay float; measured on the
    # finance model: 4.7× the texts/s of the SavedModel on 2 cores, 99.6 % of labels equal — docs/results.md)
    tflite_quantization: Literal["none", "dynamic"] = "none"
    monitoring_profile: bool = True  # `moat export` also writes the monitor's reference profile (from the dev split)

    def validate(self):
        if self.version is not None and self.version < 1:
            raise ConfigError(f"config key 'version' must be >= 1, got {self.version}",
                              fix="TF Serving only loads positive integer version dirs")
        if self.max_length is not None and not 8 <= self.max_length <= 512:
            raise ConfigError(f"config key 'max_length' is {self.max_length}", fix="use 8..512")
        if self.tflite_quantization not in ("none", "dynamic"):
            raise ConfigError(f"config key 'tflite_quantization' is {self.tflite_quantization!r}",
                              fix="use none or dynamic")


CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_EXAMPLE_SPEC = tf.TensorSpec([None], tf.string, name="inputs")


class TextModelModule(tf.Module):
    """Raw text → tokenizer → HF model → task outputs, for a classifier (labels) or a regressor (target_scale)."""

    def __init__(self, *, model, vocab: list[str], max_length: int, labels: list[str] | None = None,
                 target_scale: dict | None = None, lower_case: bool = True):
        super().__init__()
        self.model = model
        self.tokenizer = InGraphBertTokenizer(vocab=vocab, max_length=max_length, lower_case=lower_case)
        self.labels = tf.constant(labels) if labels else None
        scale = target_scale or {"mean": 0.0, "std": 1.0}
        self.mean, self.std = float(scale["mean"]), float(scale["std"])

    def _outputs(self, text):
        input_ids, attention_mask = self.tokenizer(text)  # (batch, seq)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, training=False).logits
        return tf.cast(logits, tf.float32)  # (batch, labels) or (batch, 1)

    def embed(self, text):
        input_ids, attention_mask = self.tokenizer(text)  # (batch, seq)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                            training=False).hidden_states[-1]  # (batch, seq, hidden)
        mask = tf.cast(attention_mask, hidden.dtype)[:, :, None]
        pooled = tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        return {"embedding": tf.cast(pooled, tf.float32)}  # (batch, hidden)

    @staticmethod
    def _texts(serialized_examples):
        return tf.io.parse_example(serialized_examples, {"text": tf.io.FixedLenFeature([], tf.string)})["text"]

    def predict_labels(self, text):
        probabilities = tf.nn.softmax(self._outputs(text), axis=-1)  # (batch, labels)
        label_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "label_id": label_id, "label": tf.gather(self.labels, label_id)}

    def classify(self, inputs):
        scores = tf.nn.softmax(self._outputs(self._texts(inputs)), axis=-1)  # (batch, labels)
        classes = tf.tile(self.labels[None, :], [tf.shape(scores)[0], 1])  # (batch, labels)
        return {"classes": classes, "scores": scores}

    def predict_score(self, text):
        return {"score": self._outputs(text)[:, 0] * self.std + self.mean}  # (batch,)

    def regress(self, inputs):
        return {"outputs": self._outputs(self._texts(inputs))[:, 0] * self.std + self.mean}  # (batch,)

    def signatures(self) -> dict:
        """Only the task's signatures are traced (a regressor has no labels to classify with)."""
        text = [tf.TensorSpec([None], tf.string, name="text")]
        # `embed` needs an HF model's hidden states; compressed variants wrap a bare logits model and go without
        embed = ({"embed": tf.function(self.embed, input_signature=text)}
                 if hasattr(getattr(self.model, "config", None), "output_hidden_states") else {})
        if self.labels is not None:
            return {"serving_default": tf.function(self.predict_labels, input_signature=text),
                    "classify": tf.function(self.classify, input_signature=[_EXAMPLE_SPEC]), **embed}
        return {"serving_default": tf.function(self.predict_score, input_signature=text),
                "regress": tf.function(self.regress, input_signature=[_EXAMPLE_SPEC]), **embed}


def save_signatures(module: tf.Module, path: str | Path, signatures: dict) -> None:
    """tf.saved_model.save without tf_keras's per-layer call traces: those let Keras rebuild the model from the
    SavedModel, which nothing here does (servers and our loaders use only the signatures), and tracing every layer
    cost a third of the save (tiny BERT: 7.8 → 5.0 s, load 0.94 → 0.38 s). tf_keras has no public switch for this
    inside tf.saved_model.save, hence its option scope."""
    try:
        from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope
        without_traces = keras_option_scope(save_traces=False)
    except ImportError:  # another Keras layout: save with the traces
        without_traces = contextlib.nullcontext()
    with without_traces:
        tf.saved_model.save(module, str(path), signatures=signatures)


def set_method_names(export_dir: Path, methods: dict[str, str]) -> None:
    """TF2's saved_model.save marks every signature `predict`; TF Serving's Classify/Regress APIs check the method
    name, so it is rewritten in saved_model.pb (the same field TF1's signature_def_utils set)."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(export_dir) / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for signature, method in methods.items():
        saved.meta_graphs[0].signature_def[signature].method_name = method
    path.write_bytes(saved.SerializeToString())


def source_of(version_dir: str | Path) -> dict:
    """What export recorded about a version (SOURCE_FILE): its task, labels and fine-tuned model dir; {} if none."""
    path = Path(version_dir) / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_text_model(model_dir: str | Path):
    """Returns (HF TF model, vocab, task info) for a dir written by `moat finetune`."""
    from transformers import TFAutoModelForSequenceClassification

    model_dir = Path(model_dir)
    task_file = model_dir / "moat_task.json"
    if not task_file.is_file() or not (model_dir / "vocab.txt").is_file():
        raise ModelError(f"'{model_dir}' is not a fine-tuned moatkit model (needs moat_task.json and vocab.txt)",
                         fix="pass the `model` dir inside a `moat finetune` run dir")
    task = json.loads(task_file.read_text())
    model = TFAutoModelForSequenceClassification.from_pretrained(model_dir)
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return model, vocab, task


def next_version(base: Path) -> int:
    """One more than any version written under base, counting those `moat iterate` rolled back into REJECTED_DIR
    (app/iterate/rollout.py): a version number is never reused."""
    versions = [int(p.name) for folder in (base, base / REJECTED_DIR) if folder.is_dir()
                for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def write_warmup(version_dir: Path, model_name: str, texts=WARMUP_TEXTS, *, inputs: dict | None = None) -> None:
    """One serving_default PredictionLog warm-up record: the `text` batch, or the named `inputs` arrays of a model
    that takes other tensors (the recommender's `history`)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = {"text": tf.constant(list(texts), dtype=tf.string)} if inputs is None else inputs
    with tf.io.TFRecordWriter(str(path)) as writer:
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
            name=model_name, signature_name="serving_default"))
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())


def write_version(base: Path, version: int | None, write) -> tuple[Path, int, int]:
    """Writes `<base>/<version>/` atomically: `write(staging_dir)` fills a temp dir that is renamed into place, so
    a server polling the base path never sees a half-written version. Returns (dir, version, bytes)."""
    base.mkdir(parents=True, exist_ok=True)
    version = next_version(base) if version is None else version
    final = base / str(version)
    if final.exists():
        raise ModelError(f"version {version} already exists at '{final}'", fix="omit --set version to use the next one")
    staging = base / f".tmp-{version}-{int(time.time())}"
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(final)
    return final, version, sum(p.stat().st_size for p in final.rglob("*") if p.is_file())


def export_text_model(config: ExportConfig, *, extra: Callable[[Path, dict], dict] | None = None) -> dict:
    """Writes a new version atomically (temp dir, then rename) so a polling server never sees half a model.
    `extra(staging_dir, task)` may add files to the version before it is published (the app layer writes the
    monitoring profile this way); what it returns is merged into the result."""
    model, vocab, task = load_text_model(config.model_dir)
    if task.get("text_pair"):
        raise ModelError(f"'{config.model_dir}' was trained on text pairs; export supports single texts so far",
                         fix="serve it in-process with TFBertForSequenceClassification for now")
    module = TextModelModule(model=model, vocab=vocab, labels=task.get("labels"), target_scale=task.get("target_scale"),
                             max_length=config.max_length or task["max_length"], lower_case=task.get("lower_case", True))
    signatures = module.signatures()

    def write(staging: Path) -> None:
        save_signatures(module, staging, signatures)
        set_method_names(staging, {name: CLASSIFY_METHOD if name == "classify" else REGRESS_METHOD
                                   for name in signatures if name in ("classify", "regress")})
        write_warmup(staging, config.name)
        # where the version came from, so `moat iterate` can warm-start from its checkpoint and replay its data
        (staging / SOURCE_FILE).write_text(json.dumps({**task, "model_dir": str(Path(config.model_dir).resolve())},
                                                      indent=2))
        if config.tflite:
            (staging / TFLITE_FILE).write_bytes(convert_to_tflite(module, quantization=config.tflite_quantization))
        if extra is not None:
            added.update(extra(staging, task) or {})

    added: dict = {}
    final, version, size = write_version(Path(config.repo) / config.name, config.version, write)
    result = {"version_dir": str(final), "version": version, "bytes": size, "labels": task.get("labels"),
              "signatures": sorted(signatures), **added}
    if config.tflite:
        result["tflite_bytes"] = (final / TFLITE_FILE).stat().st_size
    return result


# === TFLite variant ===



class TFLiteBertTokenizer(tf.Module):
    """The exported tokenizer rebuilt from ops that have TFLite kernels (builtins + tensorflow_text's).

    The pip TensorFlow (>= 2.20) ships no Flex delegate, so a TFLite graph may hold no TF ops: the regex
    pre-cleaning (StaticRegexReplace) and the ragged slice/concat (RaggedRange, RaggedGather) are left out.
    FastBertNormalize already turns control characters into spaces; the ids equal the SavedModel tokenizer's on
    15,948 of 15,949 MR+TREC sentences (the other holds U+FFFD, which the regex deletes). Same padding: to the
    longest sentence of the batch, at most max_length."""

    def __init__(self, base: InGraphBertTokenizer):
        super().__init__()
        self.base = base

    def __call__(self, text: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        base = self.base
        width = base.max_length - 2
        tokens = base.tokenizer.tokenize(text)  # (batch, (tokens))
        body = tokens.to_tensor(default_value=base.pad_id, shape=[None, width])  # (batch, ≤ width), truncated
        lengths = tf.minimum(tokens.row_lengths(), width)  # (batch,)
        batch, seq = tf.shape(body)[0], tf.shape(body)[1] + 2

        def column(token_id):
            return tf.fill([batch, 1], tf.constant(token_id, tf.int64))

        ids = tf.concat([column(base.cls_id), body, column(base.pad_id)], axis=1)  # (batch, seq)
        positions = tf.range(seq, dtype=tf.int64)[None, :]  # (1, seq)
        ends = lengths[:, None] + 1  # (batch, 1): where [SEP] goes
        ids = tf.where(positions == ends, tf.constant(base.sep_id, tf.int64), ids)
        keep = tf.reduce_max(lengths) + 2
        return tf.cast(ids[:, :keep], tf.int32), tf.cast(positions[:, :keep] <= ends, tf.int32)


def convert_to_tflite(module: TextModelModule, *, quantization: str = "none") -> bytes:
    """serving_default as a TFLite flatbuffer: TFLite builtins plus tensorflow_text custom ops (no Flex ops);
    quantization "dynamic" stores the weights as int8 (the converter's default optimization without a
    representative dataset)."""
    saved_tokenizer = module.tokenizer
    module.tokenizer = TFLiteBertTokenizer(saved_tokenizer)
    try:
        function = module.signatures()["serving_default"]
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], module)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.allow_custom_ops = True  # FastBertNormalize, FastWordpieceTokenizeWithOffsets, RaggedTensorToTensor
        if quantization == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()
    except Exception as err:  # the converter's errors are long MLIR dumps: keep the first line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelError(f"TFLite conversion failed: {first}", fix="export without --set tflite=true") from err
    finally:
        module.tokenizer = saved_tokenizer
