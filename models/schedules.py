"""Learning-rate schedules."""

import tensorflow as tf


class WarmupLinearDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then linear decay to `end_ratio * peak` at `total_steps`."""

    def __init__(self, *, peak: float, total_steps: int, warmup_steps: int, end_ratio: float = 0.0):
        super().__init__()
        self.peak = peak
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)
        self.end_ratio = end_ratio

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = self.peak * step / max(self.warmup_steps, 1)
        remaining = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        decay = self.peak * (self.end_ratio + (1 - self.end_ratio) * tf.clip_by_value(remaining, 0.0, 1.0))
        return tf.where(step < self.warmup_steps, warmup, decay)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "end_ratio": self.end_ratio}
