"""The log reader: every PredictionLog kind the server writes, several files, follow mode, truncated and corrupt
records — each record parsed or counted as skipped with its reason."""
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, inference_pb2, predict_pb2, prediction_log_pb2,
                                     regression_pb2)

from moatkit.serving.monitoring.logs import LogReader


def _entry(model="sentiment", version=3):
    entry = prediction_log_pb2.PredictionLog()
    entry.log_metadata.model_spec.name = model
    entry.log_metadata.model_spec.version.value = version
    entry.log_metadata.model_spec.signature_name = "serving_default"
    entry.log_metadata.timestamp_secs = 1_800_000_000
    return entry


def predict_record(texts, probabilities, **kwargs) -> bytes:
    entry = _entry(**kwargs)
    entry.predict_log.request.inputs["text"].CopyFrom(tf.make_tensor_proto(texts, dtype=tf.string))
    entry.predict_log.response.outputs["probabilities"].CopyFrom(
        tf.make_tensor_proto(np.asarray(probabilities, np.float32)))
    return entry.SerializeToString()


def _examples(request, texts):
    for text in texts:
        request.input.example_list.examples.add().features.feature["text"].bytes_list.value.append(text.encode())


def classify_record(texts, scores) -> bytes:
    entry = _entry()
    entry.classify_log.request.CopyFrom(classification_pb2.ClassificationRequest())
    _examples(entry.classify_log.request, texts)
    for row in scores:
        result = entry.classify_log.response.result.classifications.add()
        for label, score in zip(("positive", "negative"), row[::-1]):  # served order need not be the label order
            result.classes.add(label=label, score=score)
    return entry.SerializeToString()


def regress_record(texts, values) -> bytes:
    entry = _entry()
    entry.regress_log.request.CopyFrom(regression_pb2.RegressionRequest())
    _examples(entry.regress_log.request, texts)
    for value in values:
        entry.regress_log.response.result.regressions.add(value=value)
    return entry.SerializeToString()


def float_input_record() -> bytes:
    entry = _entry()
    entry.predict_log.request.CopyFrom(predict_pb2.PredictRequest())
    entry.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))
    return entry.SerializeToString()


def write(path, records) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def test_every_kind_is_read_and_every_record_accounted_for(tmp_path):
    write(tmp_path / "sentiment.1.100.tfrecord", [
        predict_record(["a fine film", "dull"], [[0.1, 0.9], [0.8, 0.2]]),
        classify_record(["great acting"], [[0.3, 0.7]]),
        regress_record(["a score"], [1.5]),
        predict_record(["other model's text"], [[0.5, 0.5]], model="other"),
        float_input_record(),
        inference_request_record()])
    write(tmp_path / "sentiment.2.200.tfrecord", [predict_record(["second pid"], [[0.6, 0.4]], version=4)])
    reader = LogReader([str(tmp_path / "sentiment")], model="sentiment", labels=["negative", "positive"])
    rows = reader.poll(final=True)
    assert [r.text for r in rows] == ["a fine film", "dull", "great acting", "a score", "second pid"]
    assert [r.kind for r in rows] == ["predict", "predict", "classify", "regress", "predict"]
    np.testing.assert_allclose(rows[2].probabilities, [0.3, 0.7])  # mapped to the label order
    np.testing.assert_allclose(rows[0].probabilities, [0.1, 0.9])
    assert rows[3].score == 1.5 and rows[4].version == 4 and rows[0].version == 3
    assert rows[0].time == 1_800_000_000
    counts = reader.counts
    assert counts["records"] == 7 and counts["records_parsed"] == 4 and counts["texts"] == 5
    assert counts["skipped_other_model"] == 1 and counts["skipped_no_text_input"] == 1
    assert counts["skipped_multi_inference_log"] == 1
    assert counts["records"] == (counts["records_parsed"] + counts["skipped_other_model"]
                                 + counts["skipped_no_text_input"] + counts["skipped_multi_inference_log"])


def inference_request_record() -> bytes:
    entry = _entry()
    entry.multi_inference_log.request.CopyFrom(inference_pb2.MultiInferenceRequest())
    return entry.SerializeToString()


def test_follow_waits_for_a_record_being_written_and_report_counts_a_truncated_one(tmp_path):
    path = tmp_path / "m.1.1.tfrecord"
    write(path, [predict_record(["one"], [[0.2, 0.8]]), predict_record(["two"], [[0.2, 0.8]])])
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) - 7])  # the server is mid-way through the second record
    reader = LogReader([str(tmp_path)])
    assert [r.text for r in reader.poll()] == ["one"]
    assert reader.counts["truncated_records"] == 0  # follow mode waits for the rest
    path.write_bytes(whole)  # the write completes
    assert [r.text for r in reader.poll()] == ["two"]
    assert reader.poll() == []

    path.write_bytes(whole[:len(whole) - 7])  # killed mid-write: in a report the tail is counted, not waited for
    final = LogReader([str(path)])
    assert [r.text for r in final.poll(final=True)] == ["one"]
    assert final.counts["truncated_records"] == 1 and final.counts["truncated_bytes"] > 0


def test_a_corrupt_record_is_counted_and_the_rest_of_its_file_reported_unreadable(tmp_path):
    path = tmp_path / "m.1.1.tfrecord"
    write(path, [predict_record(["one"], [[0.2, 0.8]]), predict_record(["two"], [[0.2, 0.8]])])
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip a byte inside the second record's payload
    path.write_bytes(bytes(data))
    reader = LogReader([str(path)])
    assert [r.text for r in reader.poll(final=True)] == ["one"]
    assert reader.counts["corrupt_records"] == 1 and reader.counts["unreadable_bytes"] > 0


def test_no_matching_files_reads_nothing(tmp_path):
    reader = LogReader([str(tmp_path / "nothing")])
    assert reader.poll(final=True) == [] and reader.discover() == []
