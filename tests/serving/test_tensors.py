
import base64
import json

import numpy as np
import pytest
import tensorflow as tf

from moatkit.serving import tensors
from moatkit.serving.tensors import COLUMNAR, ROW, ServingError


def test_row_format_single_input_strings_and_b64():
    body = {"instances": ["hi", {"b64": base64.b64encode(b"\xff\x00").decode()}]}
    arrays, fmt = tensors.parse_predict_request(body, {"text": tf.string})
    assert fmt == ROW
    assert arrays["text"].tolist() == [b"hi", b"\xff\x00"]


def test_row_format_named_inputs_are_stacked():
    body = {"instances": [{"x": [1, 2, 3], "scale": 2.0}, {"x": [4.5, 5, 6], "scale": 1}]}
    arrays, _ = tensors.parse_predict_request(body, {"x": tf.float32, "scale": tf.float32})
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (2, 3)
    np.testing.assert_array_equal(arrays["scale"], np.array([2.0, 1.0], np.float32))


def test_columnar_format():
    arrays, fmt = tensors.parse_predict_request({"inputs": {"x": [[1, 2, 3]], "scale": [1]}},
                                                {"x": tf.float32, "scale": tf.float32})
    assert fmt == COLUMNAR and arrays["x"].shape == (1, 3)
    arrays, fmt = tensors.parse_predict_request({"inputs": ["a", "b"]}, {"text": tf.string})
    assert arrays["text"].tolist() == [b"a", b"b"]


@pytest.mark.parametrize("body, fragment", [
    ({"instances": 3}, "Excepting 'instances' to be an list/array"),
    ({"instances": []}, "No values in 'instances' array"),
    ({"instances": [1], "inputs": [1]}, "expecting only one of 'inputs' or 'instances'"),
    ({"foo": 1}, "Missing 'inputs' or 'instances' key"),
    ({"instances": [[1, 2], [3]]}, "Expecting shape"),
    ({"instances": [[[1], 2]]}, "found at incorrect level"),
    ({"instances": [[1, [2]]]}, "Encountered list at unexpected level"),
])
def test_malformed_requests_are_invalid_argument(body, fragment):
    with pytest.raises(ServingError) as err:
        tensors.parse_predict_request(body, {"x": tf.float32})
    assert err.value.code == "INVALID_ARGUMENT"
    assert fragment in err.value.message


def test_dtype_is_validated_from_signature():
    with pytest.raises(ServingError, match="is not of expected type: float"):
        tensors.json_to_array(["a"], tf.float32)
    with pytest.raises(ServingError, match="is not of expected type: int32"):
        tensors.json_to_array([1.5], tf.int32)
    with pytest.raises(ServingError, match="is not of expected type: string"):
        tensors.json_to_array([1], tf.string)
    with pytest.raises(ServingError, match="without loss of precision"):
        tensors.json_to_array([2 ** 30 + 1], tf.float32)
    assert tensors.json_to_array([[True, False]], tf.bool).dtype == np.bool_
    assert tensors.json_to_array([7], tf.int64).dtype == np.int64


def test_float_formatting_round_trips_float32():
    assert tensors.format_float(np.float32(0.123456789), np.float32) == "0.12345679"
    assert tensors.format_float(np.float32(2), np.float32) == "2.0"
    assert tensors.format_float(0.1, np.float64) == "0.1"
    assert tensors.format_float(float("nan"), np.float32) == "NaN"
    assert tensors.format_float(float("-inf"), np.float32) == "-Infinity"
    values = np.random.default_rng(0).standard_normal(200).astype(np.float32)
    parsed = np.array(json.loads(tensors.array_to_json(values)), dtype=np.float32)
    np.testing.assert_array_equal(parsed, values)


def test_predict_response_shapes():
    probs = np.array([[0.25, 0.75], [1.0, np.inf]], np.float32)
    labels = np.array([b"long", b"short"], dtype=object)
    row = tensors.predict_response_json({"probabilities": probs}, ROW)
    assert row == '{"predictions": [[0.25, 0.75], [1.0, Infinity]]}'
    both = json.loads(tensors.predict_response_json({"probabilities": probs, "label": labels}, ROW))
    assert both == {"predictions": [{"label": "long", "probabilities": [0.25, 0.75]},
                                    {"label": "short", "probabilities": [1.0, float("inf")]}]}
    columnar = json.loads(tensors.predict_response_json({"probabilities": probs, "label": labels}, COLUMNAR))
    assert columnar["outputs"]["label"] == ["long", "short"]
    raw = json.loads(tensors.predict_response_json({"img_bytes": np.array([b"\x00\xff"], dtype=object)}, ROW))
    assert raw == {"predictions": [{"b64": "AP8="}]}


def test_tensor_proto_round_trip_and_coercion():
    array = np.array([[1.5, 2.0]], np.float32)
    back = tensors.from_tensor_proto(tensors.to_tensor_proto(array))
    np.testing.assert_array_equal(back, array)
    strings = tensors.from_tensor_proto(tensors.to_tensor_proto(np.array(["a", "bc"])))
    assert strings.tolist() == [b"a", b"bc"]
    with pytest.raises(ServingError, match=r"Expects arg\[0\] to be float but double is provided"):
        tensors.coerce(np.zeros(2, np.float64), tf.float32)


def test_json_body_parsing():
    assert tensors.load_json_body(b'{"instances": [NaN]}')["instances"][0] != 0
    with pytest.raises(ServingError, match="document is empty"):
        tensors.load_json_body(b"")
    with pytest.raises(ServingError, match="Is not object"):
        tensors.load_json_body(b"[1]")
    with pytest.raises(ServingError, match="'signature_name' key must be a string"):
        tensors.load_json_body(b'{"signature_name": 3}')
