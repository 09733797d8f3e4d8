"""Server-side request batching for moat-model-server (`--enable_batching`), modelled on TF Serving's
BatchingSession + SharedBatchScheduler.

- `--batching_parameters_file` is a text-format tensorflow.serving.BatchingParameters. The pip
  tensorflow-serving-api ships no session_bundle_config_pb2, so the message is declared here from
  session_bundle_config.proto (same field names and numbers, wrapper types) and parsed with protobuf's
  text_format, which gives the same syntax and errors as the real parser.
- One queue per (servable version, signature). A request (task) joins the open batch of its queue if it fits
  under max_batch_size, else it opens a new batch; if that would exceed max_enqueued_batches the request fails
  with UNAVAILABLE "The batch scheduling queue to which this task was submitted is full". A batch runs when it
  is full, when a newer batch exists behind it, or batch_timeout_micros after its first task arrived, on one
  of num_batch_threads threads shared by all queues.
- A batch is ONE signature call: inputs are concatenated along dim 0 (tasks whose other dims differ run as
  separate sub-batches unless pad_variable_length_inputs pads them, with each tensor's first element, to the
  largest shape), padded with copies of the first row up to the next allowed_batch_sizes entry, and the
  outputs are sliced back per task (padding rows dropped). If the merged call fails, each task is rerun on its
  own so an error reaches only the request that caused it.
- Metrics on the Prometheus page: histograms :tensorflow:serving:batching_session:{input_batch_size,
  processed_batch_size,padding_size} per model (processed_batch_size_count = signature calls), and the gauge
  :moat:serving:batching:queued_batches (batches waiting for a batch thread).
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from moatkit.serving.errors import ServingConfigError
from moatkit.serving.tensors import UNAVAILABLE, ServingError, invalid

log = logging.getLogger("moat.serving")

DEFAULT_MAX_BATCH_SIZE = 1000  # BasicBatchScheduler::Options defaults
DEFAULT_BATCH_TIMEOUT_MICROS = 0
DEFAULT_NUM_BATCH_THREADS = 4
DEFAULT_MAX_ENQUEUED_BATCHES = 10
QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"

_MESSAGE_CLASS = None


def batching_parameters_class():
    """The tensorflow.serving.BatchingParameters message class (built once, in a private descriptor pool)."""
    global _MESSAGE_CLASS
    if _MESSAGE_CLASS is not None:
        return _MESSAGE_CLASS
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving", syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file_proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    wrapped = [("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
               ("thread_pool_name", 3, "StringValue"), ("num_batch_threads", 4, "Int64Value"),
               ("max_enqueued_batches", 5, "Int64Value"), ("enable_large_batch_splitting", 6, "BoolValue"),
               ("max_execution_batch_size", 7, "Int64Value")]
    for name, number, kind in wrapped:
        message.field.add(name=name, number=number, label=field.LABEL_OPTIONAL, type=field.TYPE_MESSAGE,
                          type_name=f".google.protobuf.{kind}")
    message.field.add(name="allowed_batch_sizes", number=8, label=field.LABEL_REPEATED, type=field.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=9, label=field.LABEL_OPTIONAL,
                      type=field.TYPE_BOOL)
    pool.Add(file_proto)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    _MESSAGE_CLASS = message_factory.GetMessageClass(descriptor)
    return _MESSAGE_CLASS


@dataclass(frozen=True)
class BatchingParameters:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    num_batch_threads: int = DEFAULT_NUM_BATCH_THREADS
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False


def parse_batching_parameters(text: str, *, source: str = "batching parameters") -> BatchingParameters:
    proto = batching_parameters_class()()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as err:
        raise ServingConfigError(f"{source}: not a text-format BatchingParameters: {err}",
                          fix="e.g. max_batch_size { value: 32 } batch_timeout_micros { value: 1000 }") from None

    def get(name, default):
        return getattr(proto, name).value if proto.HasField(name) else default

    params = BatchingParameters(
        max_batch_size=get("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
        batch_timeout_micros=get("batch_timeout_micros", DEFAULT_BATCH_TIMEOUT_MICROS),
        num_batch_threads=get("num_batch_threads", DEFAULT_NUM_BATCH_THREADS),
        max_enqueued_batches=get("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES),
        allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
        pad_variable_length_inputs=proto.pad_variable_length_inputs)
    if get("enable_large_batch_splitting", False):
        log.warning("%s: enable_large_batch_splitting is accepted but has no effect here", source)
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if getattr(params, name) <= 0:
            raise ServingConfigError(f"{source}: {name} must be positive, got {getattr(params, name)}")
    if params.batch_timeout_micros < 0:
        raise ServingConfigError(f"{source}: batch_timeout_micros must be non-negative")
    sizes = params.allowed_batch_sizes
    if sizes:  # batching_session.cc ValidateAllowedBatchSizes
        if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] <= 0:
            raise ServingConfigError(f"{source}: allowed_batch_sizes entries must be monotonically increasing")
        if sizes[-1] != params.max_batch_size:
            raise ServingConfigError(f"{source}: final entry in allowed_batch_sizes must equal max_batch_size when "
                              "enable_large_batch_splitting is False")
    return params


def load_batching_parameters(path: str) -> BatchingParameters:
    if not path:
        return BatchingParameters()
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ServingConfigError(f"--batching_parameters_file={path}: {err.strerror}",
                          fix="pass a text-format BatchingParameters file") from None
    return parse_batching_parameters(text, source=path)


# === Scheduling ===

class _Task:
    __slots__ = ("feeds", "size", "done", "result", "error")

    def __init__(self, feeds: dict[str, np.ndarray], size: int):
        self.feeds, self.size = feeds, size
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None


class _Batch:
    __slots__ = ("tasks", "size", "created")

    def __init__(self):
        self.tasks: list[_Task] = []
        self.size = 0
        self.created = time.monotonic()


class _Queue:
    def __init__(self, run, key):
        self.run = run  # feeds -> {alias: np.ndarray}, one signature call
        self.key = key
        self.model = ""
        self.batches: deque[_Batch] = deque()


def task_size(feeds: dict[str, np.ndarray]) -> int:
    sizes = set()
    for array in feeds.values():
        if np.ndim(array) == 0:
            raise invalid("Batching session Run() input tensors must have at least one dimension")
        sizes.add(np.shape(array)[0])
    if len(sizes) != 1:
        raise invalid("Batching session Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


class BatchScheduler:
    """Shared by every batched servable; `submit` blocks until the task's slice of its batch is computed."""

    def __init__(self, params: BatchingParameters):
        self.params = params
        self._timeout = params.batch_timeout_micros / 1e6
        self._queues: dict[object, _Queue] = {}
        self._cond = threading.Condition()
        self._stopped = False
        # Metrics: per model name, like TF Serving's batching_session histograms.
        self.input_batch_sizes: Counter = Counter()      # (model, size) -> count of requests
        self.processed_batch_sizes: Counter = Counter()  # (model, padded size) -> count of signature calls
        self.padding_sizes: Counter = Counter()          # (model, padding rows) -> count of signature calls
        self._metrics_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"moat-batch-{i}", daemon=True)
                         for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def submit(self, key, run, feeds: dict[str, np.ndarray], *, model: str = ""):
        """Queues one request; returns its outputs or raises its error. `key` names the queue."""
        size = task_size(feeds)
        if size > self.params.max_batch_size:
            raise invalid(f"Task size {size} is larger than maximum input batch size {self.params.max_batch_size}")
        task = _Task(feeds, size)
        with self._cond:
            if self._stopped:
                raise ServingError(UNAVAILABLE, "Batch scheduler is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(run, key)
            queue.model = model
            open_batch = queue.batches[-1] if queue.batches else None
            if open_batch is None or open_batch.size + size > self.params.max_batch_size:
                if len(queue.batches) >= self.params.max_enqueued_batches:
                    raise ServingError(UNAVAILABLE, QUEUE_FULL)
                open_batch = _Batch()
                queue.batches.append(open_batch)
            open_batch.tasks.append(task)
            open_batch.size += size
            self._cond.notify_all()
        with self._metrics_lock:
            self.input_batch_sizes[(model, size)] += 1
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def _ready(self, now: float):
        """(queue, batch) of the first batch ready to run, else (None, seconds until one may be)."""
        wait = None
        for queue in self._queues.values():
            if not queue.batches:
                continue
            head = queue.batches[0]
            if (len(queue.batches) > 1 or head.size >= self.params.max_batch_size
                    or now - head.created >= self._timeout):
                return queue, head
            left = head.created + self._timeout - now
            wait = left if wait is None else min(wait, left)
        return None, wait

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        for queue in self._queues.values():
                            for batch in queue.batches:
                                for task in batch.tasks:
                                    task.error = ServingError(UNAVAILABLE, "Batch scheduler is shutting down")
                                    task.done.set()
                            queue.batches.clear()
                        return
                    queue, wait = self._ready(time.monotonic())
                    if queue is not None:
                        batch = queue.batches.popleft()
                        if not queue.batches:
                            del self._queues[queue.key]
                        break
                    self._cond.wait(wait)
            try:
                self._process(queue, batch)
            except BaseException as err:  # never leave a request hanging
                for task in batch.tasks:
                    if not task.done.is_set():
                        task.error = err if isinstance(err, ServingError) else ServingError("INTERNAL", str(err))
                        task.done.set()

    # -- running one batch --

    def _process(self, queue: _Queue, batch: _Batch) -> None:
        groups: dict[tuple, list[_Task]] = {}
        for task in batch.tasks:
            groups.setdefault(self._group_key(task.feeds), []).append(task)
        for tasks in groups.values():
            self._run_group(queue, tasks)

    def _group_key(self, feeds) -> tuple:
        if self.params.pad_variable_length_inputs:
            return tuple(sorted((alias, np.ndim(a)) for alias, a in feeds.items()))
        return tuple(sorted((alias, np.shape(a)[1:]) for alias, a in feeds.items()))

    def _padded_size(self, total: int) -> int:
        sizes = self.params.allowed_batch_sizes
        if not sizes:
            return total
        return sizes[min(bisect.bisect_left(sizes, total), len(sizes) - 1)]

    def _run_group(self, queue: _Queue, tasks: list[_Task]) -> None:
        total = sum(t.size for t in tasks)
        padded = self._padded_size(total)
        model = queue.model
        try:
            merged = {}
            for alias in tasks[0].feeds:
                parts = [t.feeds[alias] for t in tasks]
                if self.params.pad_variable_length_inputs:
                    parts = _pad_to_common_shape(parts)
                array = np.concatenate(parts, axis=0)
                if padded > total:
                    array = np.concatenate([array] + [array[:1]] * (padded - total), axis=0)
                merged[alias] = array
            outputs = queue.run(merged)
            for alias, value in outputs.items():
                if np.ndim(value) == 0 or np.shape(value)[0] != padded:
                    raise invalid(f"Batched output tensor {alias} has 0th dimension "
                                  f"{np.shape(value)[0] if np.ndim(value) else 0} which doesn't match "
                                  f"batch size {padded}")
        except BaseException as err:
            with self._metrics_lock:
                self.processed_batch_sizes[(model, padded)] += 1
            if len(tasks) == 1:
                tasks[0].error = err
                tasks[0].done.set()
                return
            log.info("A batch of %d requests failed (%s); rerunning them one by one", len(tasks), err)
            for task in tasks:  # each request gets its own result or its own error
                self._run_group(queue, [task])
            return
        with self._metrics_lock:
            self.processed_batch_sizes[(model, padded)] += 1
            self.padding_sizes[(model, padded - total)] += 1
        start = 0
        for task in tasks:
            task.result = {alias: value[start:start + task.size] for alias, value in outputs.items()}
            start += task.size
            task.done.set()

    def queued_batches(self) -> Counter:
        """model -> batches waiting in its queues (not yet taken by a batch thread)."""
        with self._cond:
            queued = Counter()
            for queue in self._queues.values():
                queued[queue.model] += len(queue.batches)
            return queued

    def prometheus_text(self) -> str:
        queued = self.queued_batches()
        lines = ["# TYPE :moat:serving:batching:queued_batches gauge"]
        lines += [f':moat:serving:batching:queued_batches{{model_name="{model}"}} {count}'
                  for model, count in sorted(queued.items())]
        for metric, counts in (("input_batch_size", self.input_batch_sizes),
                               ("processed_batch_size", self.processed_batch_sizes),
                               ("padding_size", self.padding_sizes)):
            name = f":tensorflow:serving:batching_session:{metric}"
            lines.append(f"# TYPE {name} histogram")
            with self._metrics_lock:
                snapshot = dict(counts)
            for model in sorted({m for m, _ in snapshot}):
                values = {size: n for (m, size), n in snapshot.items() if m == model}
                running = 0
                for size in sorted(values):
                    running += values[size]
                    lines.append(f'{name}_bucket{{model_name="{model}",le="{size}"}} {running}')
                lines.append(f'{name}_bucket{{model_name="{model}",le="+Inf"}} {running}')
                lines.append(f'{name}_sum{{model_name="{model}"}} {sum(s * n for s, n in values.items())}')
                lines.append(f'{name}_count{{model_name="{model}"}} {running}')
        return "\n".join(lines) + "\n"


def _pad_to_common_shape(parts: list[np.ndarray]) -> list[np.ndarray]:
    """pad_variable_length_inputs: pads dims 1.. to the largest size, with each tensor's first element."""
    target = tuple(max(dims) for dims in zip(*(p.shape[1:] for p in parts)))
    padded = []
    for part in parts:
        if part.shape[1:] == target or part.size == 0:
            padded.append(part if part.size else np.zeros((part.shape[0], *target), dtype=part.dtype))
            continue
        widths = [(0, 0)] + [(0, t - d) for t, d in zip(target, part.shape[1:])]
        fill = part.reshape(-1)[0]
        if part.dtype == object:
            out = np.full((part.shape[0], *target), fill, dtype=object)
            out[tuple(slice(0, d) for d in part.shape)] = part
            padded.append(out)
        else:
            padded.append(np.pad(part, widths, mode="constant", constant_values=fill))
    return padded
