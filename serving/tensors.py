"""Tensor conversions for the model server: REST JSON <-> numpy <-> TensorProto.

The JSON rules follow TF Serving's documented REST API (api_rest.md):
- row format `{"instances": [...]}`: one element per batch row, each either a value/list (single input)
  or an object keyed by input name; the batch dimension is added by stacking;
- columnar format `{"inputs": ...}`: the value (single input) or an object of name -> nested list;
- DT_STRING values may be `{"b64": "..."}`; string outputs whose alias ends in `_bytes` are written as b64;
- the dtype comes from the signature and is validated (a float input rejects a string, an int input rejects
  a decimal), the shape is left to the graph.

Floats are written with the shortest text that round-trips to the same float32/float64, NaN and Inf as the
bare tokens NaN / Infinity / -Infinity, as TF Serving does (most JSON parsers, Python's included, accept them).
"""
from __future__ import annotations


import base64
import binascii
import json
import math

import numpy as np
import tensorflow as tf

from moatkit.serving.errors import ServerError

# gRPC status code names; rest.py maps them to HTTP codes the way TF Serving's http_server.cc does.
OK = "OK"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
UNIMPLEMENTED = "UNIMPLEMENTED"
UNAVAILABLE = "UNAVAILABLE"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
INTERNAL = "INTERNAL"
UNKNOWN = "UNKNOWN"

ROW = "row"
COLUMNAR = "columnar"
MAX_RANK = 32  # numpy's lowest limit on array dimensions (1.x); TensorFlow allows 254


class ServingError(ServerError):
    """A request or servable error carrying the canonical status code TF Serving would return."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def invalid(message: str) -> ServingError:
    return ServingError(INVALID_ARGUMENT, message)


def dtype_name(dtype) -> str:
    """TensorFlow's DataTypeString spelling (float, double, ...), which TF Serving's messages use."""
    name = tf.as_dtype(dtype).name
    return {"float32": "float", "float64": "double", "float16": "half"}.get(name, name)


# === JSON -> numpy ===

def _json_str(value) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


def json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _type_error(value, dtype: tf.DType) -> ServingError:
    return invalid(f"JSON Value: {_json_str(value)} Type: {json_type(value)} "
                   f"is not of expected type: {dtype_name(dtype)}")


def json_scalar(value, dtype: tf.DType):
    """Validates one JSON leaf against the signature dtype and returns the python value to store."""
    if dtype == tf.string:
        if isinstance(value, str):
            return value.encode("utf-8")
        if is_b64(value):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise invalid("Unable to base64 decode") from None
        if isinstance(value, dict):
            raise invalid(f"JSON Value: {_json_str(value)} not formatted correctly for base64 data")
        raise _type_error(value, dtype)
    if isinstance(value, (dict, list, str)) or value is None:
        raise _type_error(value, dtype)
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if isinstance(value, bool):
        raise _type_error(value, dtype)
    if dtype.is_floating:
        limit = float(np.finfo(dtype.as_numpy_dtype).max)
        if isinstance(value, int):
            if abs(value) > 2 ** np.finfo(dtype.as_numpy_dtype).nmant * 2 - 1:
                raise invalid(f"Cannot convert JSON value: {value} to {dtype_name(dtype)} without loss of precision.")
        elif math.isfinite(value) and abs(value) > limit:
            raise invalid(f"Cannot convert JSON value: {_json_str(value)} to {dtype_name(dtype)} "
                          "without loss of precision.")
        return value
    if dtype.is_integer:
        if not isinstance(value, int):
            raise _type_error(value, dtype)
        if not dtype.min <= value <= dtype.max:
            raise _type_error(value, dtype)
        return value
    raise ServingError(UNIMPLEMENTED, f"Conversion of JSON Value: {_json_str(value)} to type: {dtype_name(dtype)}")


def _dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, shape: list[int], dtype: tf.DType, out: list) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid(f"JSON Value: {_json_str(value)} found at incorrect level: {level + 1} "
                          f"in the JSON DOM. Expected at level: {len(shape)}")
        out.append(json_scalar(value, dtype))
        return
    if level >= len(shape):
        raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                      f"expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def json_to_array(value, dtype: tf.DType) -> np.ndarray:
    """A nested JSON list (or scalar / b64 object) -> numpy array of the signature's dtype."""
    dtype = tf.as_dtype(dtype)
    shape = _dense_shape(value)
    if len(shape) > MAX_RANK:
        raise invalid(f"JSON Value: {_json_str(value)[:200]} has {len(shape)} nested lists; "
                      f"a tensor can have at most {MAX_RANK} dimensions")
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    np_dtype = object if dtype == tf.string else dtype.as_numpy_dtype
    array = np.empty(len(flat), dtype=np_dtype)
    array[:] = flat
    return array.reshape(shape)


def _parse_instances(instances: list, input_dtypes: dict[str, tf.DType]) -> dict[str, np.ndarray]:
    def is_named(item):
        return isinstance(item, dict) and not is_b64(item)

    named = is_named(instances[0])
    if not named and len(input_dtypes) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                      "required as per tensorinfo_map")
    rows: dict[str, list[np.ndarray]] = {}
    for index, item in enumerate(instances):
        if named:
            if not is_named(item):
                raise invalid(f"Expecting object but got list at item {index} of input list")
            if set(item) != set(input_dtypes):
                raise invalid(f"Failed to process element: {index} of 'instances' list. JSON object: "
                              f"{_json_str(item)} keys must be equal to: {','.join(sorted(input_dtypes))}")
            pairs = item.items()
        else:
            if is_named(item):
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
            pairs = [(next(iter(input_dtypes)), item)]
        for name, value in pairs:
            try:
                array = json_to_array(value, input_dtypes[name])
            except ServingError as err:
                key = f" key: {name}" if named else ""
                raise invalid(f"Failed to process element: {index}{key} of 'instances' list. "
                              f"Error: {err.code}: {err.message}") from None
            previous = rows.setdefault(name, [])
            if previous and previous[0].shape != array.shape:
                raise invalid(f"Failed to process element: {index} of 'instances' list. Error: "
                              f"{INVALID_ARGUMENT}: Expecting shape {list(previous[0].shape)} "
                              f"but got: {list(array.shape)}")
            previous.append(array)
    return {name: np.stack(arrays) for name, arrays in rows.items()}


def parse_predict_request(body, input_dtypes: dict[str, tf.DType]) -> tuple[dict[str, np.ndarray], str]:
    """A decoded REST predict body -> ({input name: array}, ROW | COLUMNAR)."""
    if not input_dtypes:
        raise invalid("Failed to get input map for signature")
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances and has_inputs:
        raise invalid(f"JSON Value: {_json_str(body)} Not formatted correctly expecting only one of "
                      "'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {_json_str(body)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {_json_str(body)} No values in 'instances' array")
        return _parse_instances(instances, input_dtypes), ROW
    if has_inputs:
        inputs = body["inputs"]
        if not isinstance(inputs, dict) or is_b64(inputs):
            if len(input_dtypes) > 1:
                raise invalid("inputs is a plain value/list, but expecting an object as multiple input "
                              "tensors required as per tensorinfo_map")
            name, dtype = next(iter(input_dtypes.items()))
            return {name: json_to_array(inputs, dtype)}, COLUMNAR
        arrays = {}
        for name, dtype in input_dtypes.items():
            if name not in inputs:
                raise invalid(f"Missing named input: {name} in 'inputs' object.")
            arrays[name] = json_to_array(inputs[name], dtype)
        return arrays, COLUMNAR
    raise invalid("Missing 'inputs' or 'instances' key")


def load_json_body(raw: bytes):
    """Parses a REST body; TF Serving accepts NaN/Infinity tokens and requires a top-level object."""
    if not raw:
        raise invalid("JSON Parse error: The document is empty")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise invalid(f"JSON Parse error: {err}") from None
    except RecursionError:
        raise invalid("JSON Parse error: the document is nested too deeply") from None
    if not isinstance(body, dict):
        raise invalid(f"JSON Value: {_json_str(body)} Is not object")
    signature = body.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid(f"JSON Value: {_json_str(body)} not formatted correctly. "
                      "'signature_name' key must be a string value.")
    return body


# === numpy -> JSON ===

def format_float(value, dtype) -> str:
    """Shortest round-tripping text for a float32/float64 value, NaN/Infinity as TF Serving writes them."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = str(np.float32(value)) if np.dtype(dtype).itemsize <= 4 else repr(value)
    if "." not in text and "e" not in text and "inf" not in text:
        text += ".0"
    return text


def _leaf_writer(array: np.ndarray, *, as_bytes: bool):
    kind = array.dtype.kind
    if kind == "f":
        return lambda v: format_float(v, array.dtype)
    if kind == "b":
        return lambda v: "true" if v else "false"
    if kind in "iu":
        return lambda v: str(int(v))
    if kind in "OSU":
        def write_string(v):
            raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
            if not as_bytes:
                try:
                    return json.dumps(raw.decode("utf-8"), ensure_ascii=False)
                except UnicodeDecodeError:
                    pass  # not text: b64 is the only lossless JSON form
            return '{"b64": ' + json.dumps(base64.b64encode(raw).decode("ascii")) + "}"
        return write_string
    raise invalid(f"Failed to write JSON value for tensor type: {array.dtype}")


def array_to_json(array: np.ndarray, *, name: str = "") -> str:
    array = np.asarray(array)
    write = _leaf_writer(array, as_bytes=name.endswith("_bytes"))

    def render(sub) -> str:
        if isinstance(sub, np.ndarray):
            if sub.ndim:
                return "[" + ", ".join(render(part) for part in sub) + "]"
            sub = sub[()]
        return write(sub)

    return render(array)


def predict_response_json(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """Output tensors -> TF Serving's `{"predictions": ...}` (row) or `{"outputs": ...}` (columnar) body."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            return '{"outputs": ' + array_to_json(outputs[names[0]], name=names[0]) + "}"
        parts = [json.dumps(n) + ": " + array_to_json(outputs[n], name=n) for n in names]
        return '{"outputs": {' + ", ".join(parts) + "}}"
    batch = None
    for name in names:
        shape = np.shape(outputs[name])
        if not shape:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch is not None and shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}")
        batch = shape[0]
    rows = []
    for i in range(batch):
        if len(names) == 1:
            rows.append(array_to_json(np.asarray(outputs[names[0]])[i], name=names[0]))
        else:
            parts = [json.dumps(n) + ": " + array_to_json(np.asarray(outputs[n])[i], name=n) for n in names]
            rows.append("{" + ", ".join(parts) + "}")
    return '{"predictions": [' + ", ".join(rows) + "]}"


def loads(text: str):
    """Parses a response body written by this module (NaN/Infinity tokens included)."""
    return json.loads(text)


# === numpy <-> TensorProto ===

def to_tensor_proto(array):
    array = np.asarray(array)
    if array.dtype.kind == "U":
        array = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array)
    return tf.make_tensor_proto(array)


RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"


def from_tensor_proto(proto, *, alias: str = "", max_bytes: int | None = None) -> np.ndarray:
    """TensorProto -> numpy, rejecting what TensorFlow's Tensor::FromProto rejects before anything is allocated:
    a bad dtype or shape, tensor_content of the wrong size, and (our addition) a tensor whose dense form would
    exceed `max_bytes` (a 20-byte proto may declare shape [2**40] with one value to broadcast)."""
    parse_error = invalid(f"tensor parsing error: {alias}" if alias else "tensor parsing error")
    try:
        dtype = tf.as_dtype(proto.dtype)
    except TypeError:
        raise parse_error from None
    if dtype in (tf.resource, tf.variant) or dtype._is_ref_dtype or proto.tensor_shape.unknown_rank:
        raise parse_error
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise parse_error
    count = math.prod(dims)
    itemsize = 8 if dtype == tf.string else dtype.size
    if max_bytes is not None and count * itemsize > max_bytes:
        raise ServingError(RESOURCE_EXHAUSTED, f"Input tensor {alias or ''} of shape {dims} and type "
                           f"{dtype_name(dtype)} needs {count * itemsize} bytes, more than the "
                           f"{max_bytes}-byte request limit".replace("tensor  of", "tensor of"))
    if proto.tensor_content and len(proto.tensor_content) != count * itemsize:
        raise parse_error
    try:
        return tf.make_ndarray(proto)
    except Exception:  # numpy/TF raise TypeError, ValueError or worse on malformed value lists
        raise parse_error from None


def coerce(array: np.ndarray, dtype: tf.DType, *, arg_index: int = 0) -> np.ndarray:
    """Checks an input's dtype against the signature (gRPC path: no implicit casts, like TF Serving)."""
    dtype = tf.as_dtype(dtype)
    array = np.asarray(array)
    if dtype == tf.string:
        if array.dtype.kind in "OSU":
            return array
    else:
        try:
            if tf.as_dtype(array.dtype) == dtype:
                return array
        except TypeError:
            pass
    got = "string" if array.dtype.kind in "OSU" else dtype_name(array.dtype)
    raise invalid(f"Expects arg[{arg_index}] to be {dtype_name(dtype)} but {got} is provided")
