"""The stream's scoring as an Apache Beam pipeline: JSON lines in → RunInference → scored JSON lines out.

`python -m moatkit.app.opinion.beam_score --model VERSION_DIR --input 'items*.jsonl' --output OUT/scored` runs on
the DirectRunner (`--runner` and Beam's own flags pass through, so the same pipeline moves to Flink or Dataflow).
It runs in the Beam venv (`make beam-venv`: Beam caps protobuf < 7, so it has its own, with TensorFlow).

RunInference gets Beam's TensorFlow model handler (`TFModelHandlerNumpy`) with its model loading and inference
replaced: Beam's default loads Keras models only, and this model is a SavedModel of signatures with an in-graph
tokenizer (plus the quantized model.tflite). The handler's model is the stream's own LocalScorer, so a text gets
exactly the probabilities `moat opinion run --set scoring=local` gives it.
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def _handler(version_dir: str, batch_size: int):
    from apache_beam.ml.inference.base import PredictionResult
    from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy

    class StreamScorerHandler(TFModelHandlerNumpy):
        def load_model(self):
            from moatkit.app.opinion.scorer import LocalScorer

            return LocalScorer(self._model_uri, batch_size=batch_size)

        def run_inference(self, batch, model, inference_args=None):
            probabilities = model.probabilities([str(text) for text in batch])
            return [PredictionResult(text, p) for text, p in zip(batch, probabilities)]

        def get_num_bytes(self, batch) -> int:
            return sum(len(str(text).encode("utf-8")) for text in batch)

    return StreamScorerHandler(model_uri=version_dir, min_batch_size=1, max_batch_size=batch_size)


def _parse(line: str):
    row = json.loads(line)
    return str(row.get("id")), row["text"]


def build(pipeline, *, version_dir: str, input_pattern: str, output: str, batch_size: int = 32, decision=None):
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    from moatkit.app.opinion.scorer import SENTIMENTS, model_labels, sentiments

    labels = model_labels(version_dir)

    def to_row(keyed):
        key, result = keyed
        probabilities = np.asarray(result.inference, dtype=np.float32)
        label = sentiments(probabilities[None, :], labels, **(decision or {}))[0]
        return json.dumps({"id": key, "text": result.example, "sentiment": SENTIMENTS[label],
                           "probabilities": [float(p) for p in probabilities]}, ensure_ascii=False)

    return (pipeline
            | "read" >> beam.io.ReadFromText(input_pattern)
            | "parse" >> beam.Map(_parse)
            | "score" >> RunInference(KeyedModelHandler(_handler(version_dir, batch_size)))
            | "format" >> beam.Map(to_row)
            | "write" >> beam.io.WriteToText(output, file_name_suffix=".jsonl"))


def main(argv: list[str] | None = None) -> int:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a sentiment version dir (<repo>/<name>/<version>)")
    parser.add_argument("--input", required=True, help="JSON-lines files (a glob) with text and id fields")
    parser.add_argument("--output", required=True, help="output prefix: PREFIX-00000-of-0000N.jsonl")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--decision", default="{}", help="scorer.sentiments keywords as JSON (from adapt.json)")
    args, beam_args = parser.parse_known_args(argv)
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        build(pipeline, version_dir=args.model, input_pattern=args.input, output=args.output,
              batch_size=args.batch_size, decision=json.loads(args.decision))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
