"""The one place that picks the distribution strategy and the precision policy."""
from __future__ import annotations

import os
from typing import Literal

from app import env as _env  # noqa: F401

import tensorflow as tf

from app.errors import ConfigError

Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]
StrategyName = Literal["auto", "default", "mirrored", "multi_worker", "tpu"]


def split_cpu(logical_devices: int) -> None:
    """Splits the CPU into N logical devices, to run multi-device code (MirroredStrategy) without GPUs.
    Must run before TensorFlow initialises its devices."""
    if logical_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == logical_devices:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_devices)
    except RuntimeError:
        raise ConfigError(f"cannot split the CPU into {logical_devices} devices: TensorFlow already started",
                          fix="set logical_cpus in a fresh process (e.g. the `moat finetune` CLI)") from None


def pick_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """TPU → MultiWorkerMirrored (TF_CONFIG set) → Mirrored (>1 device) → default, or the one named."""
    # MultiWorkerMirrored must configure the runtime before anything (e.g. listing logical devices) starts it
    if name == "multi_worker" or (name == "auto" and os.environ.get("TF_CONFIG")
                                  and not tf.config.list_physical_devices("TPU")):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "auto":
        if tf.config.list_logical_devices("TPU"):
            name = "tpu"
        elif os.environ.get("TF_CONFIG"):
            name = "multi_worker"
        elif len(gpus) > 1 or (not gpus and len(cpus) > 1):
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in (gpus or cpus)]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"unknown strategy '{name}'", fix="use auto, default, mirrored, multi_worker or tpu")


def set_precision(policy: str) -> None:
    """float32, mixed_float16 (GPU; tf_keras wraps the optimizer in a LossScaleOptimizer at compile) or
    mixed_bfloat16 (TPU/CPU). Callers keep logits and losses in float32."""
    if policy not in ("float32", "mixed_float16", "mixed_bfloat16"):
        raise ConfigError(f"unknown precision '{policy}'", fix="use float32, mixed_float16 or mixed_bfloat16")
    tf.keras.mixed_precision.set_global_policy(policy)
