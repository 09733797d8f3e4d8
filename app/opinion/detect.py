"""Spike detectors with false-alarm control: a Bernoulli CUSUM on each entity's negative share, a Poisson test on
its negative volume per time window.

Share: each mention of an entity is negative (1) or not (0). Under control it is Bernoulli(p0), p0 the entity's
own history (shrunk towards the market-wide share while it is short); the CUSUM looks for p1 = min(shift·p0, 0.95).
The statistic is kept on an integer grid (the positive step is `GRID` units) so its in-control average run length
(ARL) is computed exactly with the Markov chain of the grid (Brook & Evans 1972) and the threshold is the smallest
with ARL ≥ 1 / rate, rate = the false-alarm budget per mention. An entity's history takes a mention only
`baseline_lag` mentions later, so a burst cannot raise its own reference before it is detected; after an alarm
the entity stays quiet for `cooldown` mentions (one burst, one alert).

Volume: per closed time window, the count of an entity's negative mentions against a Poisson with the entity's
mean per window so far; the p-value is Bonferroni-corrected over the watched entities.
"""
from __future__ import annotations

import functools
import math
from collections import deque

import numpy as np
from scipy import stats

GRID = 16  # grid units of the positive CUSUM step: finer costs states, coarser loses exactness of the ARL


@functools.lru_cache(maxsize=4096)
def _threshold_units(p0_pct: int, shift: float, arl: int) -> tuple[int, int, int]:
    """(up, down, h) grid units for p0 = p0_pct / 1000: the smallest h whose in-control ARL from 0 is ≥ arl."""
    p0 = p0_pct / 1000
    p1 = min(shift * p0, 0.95)
    up_llr, down_llr = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    up, down = GRID, max(1, round(-down_llr / up_llr * GRID))

    def arl_from_zero(h: int) -> float:
        # states 0..h-1; from s: +up with p0 (absorbed at ≥ h), else max(0, s - down)
        q = np.zeros((h, h))
        for s in range(h):
            if s + up < h:
                q[s, s + up] += p0
            q[s, max(0, s - down)] += 1 - p0
        return float(np.linalg.solve(np.eye(h) - q, np.ones(h))[0])

    lo, hi = up, up
    while arl_from_zero(hi) < arl:
        lo, hi = hi, hi * 2
        if hi > 200_000:
            raise ValueError(f"no CUSUM threshold reaches ARL {arl} for p0={p0}")
    while lo < hi:  # smallest h with ARL ≥ arl
        mid = (lo + hi) // 2
        if arl_from_zero(mid) >= arl:
            hi = mid
        else:
            lo = mid + 1
    return up, down, hi


class ShareCusum:
    """The negative-share CUSUM of one entity."""

    def __init__(self, *, shift: float, arl: int, prior_share: float, prior_strength: float, burn_in: int,
                 baseline_lag: int, cooldown: int = 0):
        self.shift, self.arl, self.burn_in = shift, arl, burn_in
        self.prior_share, self.prior_strength = prior_share, prior_strength
        self.pending: deque[int] = deque()
        self.history_n = self.history_neg = 0
        self.baseline_lag = baseline_lag
        self.statistic = 0  # grid units
        self.run: list[int] = []  # positions (mention numbers) since the statistic last was 0
        self.mentions = 0
        self.cooldown, self.quiet_until = cooldown, 0  # after an alarm, `cooldown` mentions without another

    @property
    def p0(self) -> float:
        p = (self.history_neg + self.prior_strength * self.prior_share) / (self.history_n + self.prior_strength)
        return min(max(p, 0.005), 0.9)

    def threshold(self) -> tuple[int, int, int]:
        return _threshold_units(int(round(self.p0 * 1000)), self.shift, self.arl)

    def update(self, negative: bool) -> dict | None:
        """Takes one mention; returns the alarm (statistic, threshold, p0, the run's mention numbers) or None."""
        self.mentions += 1
        self.pending.append(int(negative))
        if len(self.pending) > self.baseline_lag:
            self.history_neg += self.pending.popleft()
            self.history_n += 1
        if self.mentions <= max(self.burn_in, self.quiet_until):
            return None
        up, down, h = self.threshold()
        self.statistic = self.statistic + up if negative else max(0, self.statistic - down)
        self.run = [] if self.statistic == 0 else self.run + [self.mentions]
        if self.statistic < h:
            return None
        alarm = {"statistic": round(self.statistic / up * math.log(min(self.shift * self.p0, 0.95) / self.p0), 3),
                 "threshold": round(h / up * math.log(min(self.shift * self.p0, 0.95) / self.p0), 3),
                 "p0": round(self.p0, 4), "p1": round(min(self.shift * self.p0, 0.95), 4), "run": list(self.run)}
        self.statistic, self.run = 0, []
        self.quiet_until = self.mentions + self.cooldown
        return alarm


def volume_p_value(count: int, mean: float) -> float:
    """P(X ≥ count) for X ~ Poisson(mean)."""
    return float(stats.poisson.sf(count - 1, max(mean, 1e-9)))


class VolumeTest:
    """Negative mentions per closed window against the entity's mean per window (at least `min_windows` seen)."""

    def __init__(self, *, alpha: float, n_entities: int, min_windows: int, min_count: int):
        self.alpha, self.n_entities = alpha, max(1, n_entities)
        self.min_windows, self.min_count = min_windows, min_count
        self.windows = 0
        self.total = 0

    def close_window(self, negatives: int) -> dict | None:
        mean = (self.total + 0.5) / (self.windows + 1) if self.windows else 0.0
        p = volume_p_value(negatives, mean) if self.windows else 1.0
        alarm = None
        if self.windows >= self.min_windows and negatives >= self.min_count and p < self.alpha / self.n_entities:
            alarm = {"count": negatives, "expected": round(mean, 3), "p_value": float(f"{p:.3g}"),
                     "alpha": self.alpha / self.n_entities}
        if alarm is None:  # an alarming window stays out of the baseline
            self.windows += 1
            self.total += negatives
        return alarm
