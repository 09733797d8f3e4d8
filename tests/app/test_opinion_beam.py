"""The stream's scoring as a Beam pipeline (RunInference, DirectRunner, in .venv-beam) gives the local path's scores."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from moatkit.app.opinion.scorer import SENTIMENTS, LocalScorer, sentiments
from moatkit.data.dataset import read_records
from moatkit.data.fetch import fetch

ROOT = Path(__file__).resolve().parents[2]
BEAM_PYTHON = Path(os.environ.get("MOAT_BEAM_PYTHON", ROOT / ".venv-beam" / "bin" / "python"))

pytestmark = pytest.mark.skipif(not BEAM_PYTHON.exists(),
                                reason=f"no Beam venv at {BEAM_PYTHON}: run `make beam-venv` (make test does)")


def test_beam_run_inference_scores_equal_the_local_scorer(opinion_adapt, tmp_path):
    finance = opinion_adapt["report"]["models"]["finance"]
    texts = [r["text"] for r in read_records(fetch("bbc-business"))[:300]] + ["<b>Yukos</b> shares fell", "ok"]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps({"id": f"t{n}", "text": t}) + "\n"
                                                  for n, t in enumerate(texts)))
    result = subprocess.run([str(BEAM_PYTHON), "-m", "moatkit.app.opinion.beam_score", "--model",
                             finance["version_dir"], "--input", str(tmp_path / "items.jsonl"), "--output",
                             str(tmp_path / "out" / "scored"), "--decision", json.dumps(finance["decision"]),
                             "--runner", "DirectRunner"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for shard in (tmp_path / "out").glob("scored-*.jsonl"):
        for line in shard.read_text().splitlines():
            row = json.loads(line)
            rows[row["id"]] = row
    assert sorted(rows) == sorted(f"t{n}" for n in range(len(texts)))  # every item, once
    local = LocalScorer(finance["version_dir"])
    expected = local.probabilities(texts)
    beam = np.array([rows[f"t{n}"]["probabilities"] for n in range(len(texts))])
    assert local.engine == "tflite" and np.abs(beam - expected).max() < 1e-6
    labels = sentiments(expected, local.labels, **finance["decision"])
    assert [rows[f"t{n}"]["sentiment"] for n in range(len(texts))] == [SENTIMENTS[i] for i in labels]
    assert rows["t300"]["text"] == "<b>Yukos</b> shares fell"
