"""The stream side of monitoring: logged texts in arrival order → per-version sliding windows → detectors,
estimates and realised accuracy. `moat monitor report` feeds it a whole log once; `follow` feeds it each poll."""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import numpy as np

from moatkit.serving.monitoring.config import MonitorConfig
from moatkit.serving.monitoring.detectors import squared_distances
from moatkit.serving.monitoring.feedback import Feedback
from moatkit.serving.monitoring.logs import LoggedText, LogReader
from moatkit.serving.monitoring.model_runner import VersionModel
from moatkit.serving.monitoring.profile import read_profile
from moatkit.serving.monitoring.windows import Window, WindowEvaluator
from moatkit.serving.errors import ServingConfigError

MAX_TESTS = 8


@dataclasses.dataclass
class _Row:
    text: LoggedText
    embedding: np.ndarray | None = None
    embedded: bool = False  # looked at (a sampled-out row stays None)
    ood: float | None = None  # distance to the nearest reference embeddings
    features: dict | None = None  # the text's input statistics (computed once, used by every window it is in)


class VersionMonitor:
    """The windows of one model version."""

    def __init__(self, config: MonitorConfig, version: int, version_dir: Path, feedback_path: str | None, *,
                 embedding_cache: dict[str, np.ndarray] | None = None):
        self.config, self.version, self.version_dir = config, version, version_dir
        self.embedding_cache = embedding_cache  # text → embedding, shared by replays of the same texts (bench)
        self.profile = read_profile(version_dir)
        permutations = max(config.permutations, math.ceil(2 * MAX_TESTS / config.alpha))
        self.evaluator = WindowEvaluator(self.profile, alpha=config.alpha, permutations=permutations,
                                         seed=config.seed)
        self.labels = self.profile.get("labels")
        self.feedback = Feedback(feedback_path, self.labels) if feedback_path and self.labels else None
        use_embeddings = config.embedding_drift and "embeddings" in self.profile
        self.model = VersionModel(version_dir) if use_embeddings else None
        self.rows: list[_Row] = []  # all rows for a report; the last window's in follow mode (keep_rows=False)
        self.keep_rows = True
        self.total = 0
        self.since_last = 0
        self.windows: list[dict] = []
        self.failing = 0
        self._rng = np.random.default_rng(config.seed)

    def add(self, texts: list[LoggedText]) -> list[dict]:
        evaluated = []
        for text in texts:
            self.rows.append(_Row(text))
            self.total += 1
            self.since_last += 1
            if len(self.rows) >= self.config.window and self.since_last >= self.config.step:
                evaluated.append(self._evaluate())
                self.since_last = 0
        if not self.keep_rows and len(self.rows) > 2 * self.config.window:
            del self.rows[:-self.config.window]
        return evaluated

    def _embed(self, rows: list[_Row]) -> None:
        todo = [r for r in rows if not r.embedded]
        for row in todo:
            row.embedded = True
        todo = [r for r in todo if self._rng.random() < self.config.embedding_sample]
        if self.model is None or not todo:
            return
        cache = self.embedding_cache if self.embedding_cache is not None else {}
        missing = sorted({r.text.text for r in todo} - cache.keys())
        if missing:
            cache.update(zip(missing, self.model.embeddings(missing)))
        embeddings = np.stack([cache[r.text.text] for r in todo])
        distances = np.sqrt(squared_distances(embeddings, self.evaluator.reference_embeddings))
        nearest = np.sort(distances, axis=1)[:, :5].mean(1)
        for row, embedding, ood in zip(todo, embeddings, nearest):
            row.embedding, row.ood = embedding, float(ood)

    def _window(self, rows: list[_Row]) -> Window:
        self._embed(rows)
        todo = [r for r in rows if r.features is None]
        if todo:
            values = self.evaluator.features.features([r.text.text for r in todo])
            for i, row in enumerate(todo):
                row.features = {name: column[i] for name, column in values.items()}
        texts = [r.text for r in rows]
        probabilities = [t.probabilities for t in texts if t.probabilities is not None]
        scores = [t.score for t in texts if t.score is not None]
        embeddings = [r.embedding for r in rows if r.embedding is not None]
        return Window(texts=[t.text for t in texts],
                      probabilities=np.stack(probabilities) if len(probabilities) == len(texts) else None,
                      scores=np.asarray(scores) if scores and len(scores) == len(texts) else None,
                      embeddings=np.stack(embeddings) if len(embeddings) >= 2 else None,
                      features={name: np.array([r.features[name] for r in rows]) for name in rows[0].features})

    def evaluate_texts(self, texts: list[LoggedText]) -> dict:
        """One window of `texts`, outside the stream (no state changes): resampled windows in the bench."""
        return self.evaluator.evaluate(self._window([_Row(t) for t in texts]))

    def _evaluate(self) -> dict:
        rows = self.rows[-self.config.window:]
        texts = [r.text for r in rows]
        window = self._window(rows)
        result = self.evaluator.evaluate(window)
        self.failing = self.failing + 1 if result["alarm"] else 0
        result.update(version=self.version, index=len(self.windows), end=self.total,
                      start_time=texts[0].time, end_time=texts[-1].time,
                      confirmed_alarm=self.failing >= self.config.confirm)
        if self.feedback is not None and window.probabilities is not None:
            result["realised"] = self._realised(texts, window.probabilities)
        self.windows.append(result)
        return result

    def _realised(self, texts: list[LoggedText], probabilities: np.ndarray) -> dict:
        truth = [self.feedback.label_of(t.text) for t in texts]
        known = [i for i, label in enumerate(truth) if label is not None]
        if not known:
            return {"labelled": 0, "accuracy": None}
        predicted = probabilities[known].argmax(1)
        correct = sum(self.labels[p] == truth[i] for p, i in zip(predicted, known))
        return {"labelled": len(known), "correct": int(correct), "accuracy": correct / len(known)}

    def ood_texts(self, count: int) -> list[dict]:
        scored = sorted((r for r in self.rows if r.ood is not None), key=lambda r: -r.ood)[:count]
        return [{"text": r.text.text, "distance": round(r.ood, 4), "source": r.text.source} for r in scored]


class Monitor:
    """All versions of one model, fed from its logs."""

    def __init__(self, config: MonitorConfig, *, keep_rows: bool = True):
        self.config, self.keep_rows = config, keep_rows
        self.base = Path(config.repo) / config.model
        if not self.base.is_dir():
            raise ServingConfigError(f"model base path '{self.base}' does not exist",
                                     fix="set repo and model to the served model's <repo>/<model>")
        if config.feedback and not Path(config.feedback).exists():
            raise ServingConfigError(f"feedback path '{config.feedback}' does not exist",
                                     fix="check the feedback setting (a .jsonl/.csv file or a dataset dir)")
        self.reader = LogReader(config.logs, model=config.model, labels=self._labels())
        self.versions: dict[int, VersionMonitor] = {}
        self.unmonitored: dict[int, str] = {}  # version → why it cannot be monitored
        self.skipped_texts: Counter = Counter()  # texts of those versions

    def _labels(self) -> list[str] | None:
        """The label order classify responses are mapped to (from the newest profile; one model, one label set)."""
        for version_dir in sorted((p for p in self.base.iterdir() if p.name.isdigit()), key=lambda p: -int(p.name)):
            try:
                return read_profile(version_dir, embeddings=False).get("labels")
            except ServingConfigError:
                continue
        return None

    def _version(self, version: int) -> VersionMonitor | None:
        if version not in self.versions and version not in self.unmonitored:
            try:
                self.versions[version] = VersionMonitor(self.config, version, self.base / str(version),
                                                        self.config.feedback)
                self.versions[version].keep_rows = self.keep_rows
            except ServingConfigError as err:
                self.unmonitored[version] = str(err)
        return self.versions.get(version)

    def poll(self, *, final: bool = False) -> list[dict]:
        rows = self.reader.poll(final=final)
        by_version: dict[int, list[LoggedText]] = {}
        for row in rows:
            by_version.setdefault(row.version, []).append(row)
        evaluated = []
        for version, texts in sorted(by_version.items()):
            monitor = self._version(version)
            if monitor is None:
                self.skipped_texts[version] += len(texts)
                continue
            evaluated.extend(monitor.add(texts))
        return evaluated
