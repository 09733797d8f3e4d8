"""The Apache Beam runner (DirectRunner, in .venv-beam) writes the same dataset dir as the local path on the same
input: `prepare` (shards, manifest, report accounting, card) and `dedup` (shards, report).

All Beam runs happen in one subprocess (Beam's import and langid's model load are most of a small run's cost),
started first so the local reference runs overlap it."""
import json
import os
import shutil
import subprocess
import types
from pathlib import Path

import pytest

from moatkit.data.core.config import dump_yaml
from moatkit.data.dataset import read_manifest, read_records, write_dataset
from moatkit.data.dedup import DedupConfig, dedup_dataset
from moatkit.data.fetch import fetch
from moatkit.data.prepare import PrepareConfig, prepare
from moatkit.data.readers import SourceConfig

ROOT = Path(__file__).resolve().parents[2]
BEAM_PYTHON = Path(os.environ.get("MOAT_BEAM_PYTHON", ROOT / ".venv-beam" / "bin" / "python"))

pytestmark = pytest.mark.skipif(not BEAM_PYTHON.exists(),
                                reason=f"no Beam venv at {BEAM_PYTHON}: run `make beam-venv` (make test does)")


def _private_network() -> list[str]:
    """Runs the Beam side without network access (and so without ports anyone else can reach) where possible."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "beam"]
    return []


def _start_beam(calls: list[list[str]]) -> subprocess.Popen:
    """`python -m moatkit.data.beam_pipeline` for each argv in one process; the last stdout line is
    {"codes": [exit code per call], "protobuf": version, "tensorflow": imported?}."""
    script = ("import json, sys, google.protobuf; from moatkit.data.beam_pipeline import main; "
              f"codes = [main(argv + ['--runner', 'DirectRunner']) for argv in {calls!r}]; "
              "print(json.dumps({'codes': codes, 'protobuf': google.protobuf.__version__, "
              "'tensorflow': 'tensorflow' in sys.modules}))")
    return subprocess.Popen(_private_network() + [str(BEAM_PYTHON), "-c", script], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _dedup_input(tmp: Path, mr_dir: Path) -> list[dict]:
    source = read_records(mr_dir)[:800]
    copies = [{**r, "id": r["id"] + "-copy", "text": r["text"].upper()} for r in source[:20]]
    edits = [{**r, "id": r["id"] + "-edit", "text": r["text"].replace(" the ", " a ", 1) + " indeed",
              "label": "negative"} for r in source[20:40]]
    records = source[:400] + copies + source[400:] + edits  # duplicates before and after their originals' shard
    write_dataset(tmp / "in", records, name="mr-sample", provenance={"test": True}, license="test", shard_size=300)
    return records


def _prepare_config(tmp: Path, mr_dir: Path) -> PrepareConfig:
    """MR and tweets slices plus a jsonl of planted duplicates, a French line, an email and a malformed line, and
    an empty csv: every kind of drop prepare accounts for (fetch, read, clean, dedup, skipped source)."""
    fetch("tweets")
    mr = read_records(mr_dir)[:200]
    extra = [{"text": r["text"].replace(" ", "  "), "label": "positive" if r["label"] == "negative" else "negative"}
             for r in mr[:25]]  # the same text once cleaned, the other label: exact duplicates + label conflicts
    extra += [{"text": r["text"].replace(" the ", " a ", 1) + " indeed", "label": r["label"]} for r in mr[100:130]]
    extra += [{"text": "Ceci est une critique en français sur un film ennuyeux et beaucoup trop long."},
              {"text": "Write to someone@example.com about this quiet and moving film about two sisters."}]
    lines = [json.dumps(r, ensure_ascii=False) for r in extra]
    lines.insert(40, "{not json")
    (tmp / "extra.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp / "empty.csv").write_text("text\n")
    sources = [SourceConfig(uri="catalog:mr", limit=400), SourceConfig(uri="catalog:tweets", limit=200),
               SourceConfig(uri=str(tmp / "extra.jsonl"), label_field="label"), SourceConfig(uri=str(tmp / "empty.csv"))]
    return PrepareConfig(sources=sources, out=str(tmp / "local"), name="sample", on_error="skip", shard_size=200,
                         progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mr_dir):
    tmp = tmp_path_factory.mktemp("beam")
    records = _dedup_input(tmp, mr_dir)
    config = _prepare_config(tmp, mr_dir)
    (tmp / "prepare.yaml").write_text(dump_yaml(config))
    (tmp / "bad.jsonl").write_text('{"text": "A perfectly good sentence about a movie."}\n{"body": "no text"}\n')
    beam = _start_beam([
        ["dedup", str(tmp / "in"), "--out", str(tmp / "dedup-beam"), "--set", "eval_sample=0"],
        ["prepare", "--config", str(tmp / "prepare.yaml"), "--out", str(tmp / "beam")],
        ["prepare", "--source", str(tmp / "bad.jsonl"), "--out", str(tmp / "bad")],  # fails in a worker
        ["dedup", str(tmp / "missing"), "--out", str(tmp / "missing-out")],  # fails on the driver
    ])
    try:
        dedup_report = dedup_dataset(tmp / "in", tmp / "dedup-local", DedupConfig(eval_sample=0))
        local = prepare(config)
        stdout, stderr = beam.communicate(timeout=300)
    finally:
        beam.kill()
    assert stdout.strip(), stderr[-3000:]
    return types.SimpleNamespace(tmp=tmp, records=records, dedup_report=dedup_report, local=local,
                                 result=json.loads(stdout.strip().splitlines()[-1]), stdout=stdout, stderr=stderr)


def test_beam_venv_has_no_tensorflow_and_reports_bad_input_as_one_line(runs):
    assert runs.result["codes"] == [0, 0, 2, 2], runs.stderr[-3000:]
    assert int(runs.result["protobuf"].split(".")[0]) < 7 and runs.result["tensorflow"] is False
    errors = [line for line in runs.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "bad.jsonl:2: no field 'text'" in errors[0] and "text_field" in errors[0]
    assert "[while running" not in errors[0] and "no manifest.json" in errors[1]
    assert not (runs.tmp / "bad").exists() and not (runs.tmp / "bad.partial").exists()


def test_beam_dedup_writes_byte_identical_shards(runs):
    local, beam = runs.tmp / "dedup-local", runs.tmp / "dedup-beam"
    assert json.loads(runs.stdout.strip().splitlines()[0])["kept"] == runs.dedup_report["kept"]
    local_shards, beam_shards = read_manifest(local)["shards"], read_manifest(beam)["shards"]
    assert len(local_shards) == 3 and beam_shards == local_shards  # names, counts and sha256
    for shard in local_shards:
        assert (beam / shard["file"]).read_bytes() == (local / shard["file"]).read_bytes()
    beam_report = json.loads((beam / "report.json").read_text())
    local_report = json.loads((local / "report.json").read_text())
    for key in ("input", "kept", "dropped", "dropped_by_reason", "dropped_records", "clusters", "label_conflicts",
                "lsh", "config", "near_candidates", "near_verified"):
        assert beam_report[key] == local_report[key], key
    assert beam_report["input"] == len(runs.records) == beam_report["kept"] + beam_report["dropped"]
    assert beam_report["dropped_by_reason"]["exact-duplicate"] == 20 and beam_report["dropped"] >= 35
    assert len(beam_report["label_conflicts"]) >= 10 and beam_report["near_verified"] >= 15


def test_beam_prepare_matches_local_prepare(runs):
    local, beam = runs.local, Path(json.loads(runs.stdout.strip().splitlines()[1])["out"])
    local_manifest, beam_manifest = read_manifest(local), read_manifest(beam)
    assert len(local_manifest["shards"]) == 3 and beam_manifest["shards"] == local_manifest["shards"]
    for shard in local_manifest["shards"]:
        assert (beam / shard["file"]).read_bytes() == (local / shard["file"]).read_bytes()
    for manifest in (local_manifest, beam_manifest):
        manifest.pop("created"), manifest["prepare"]["config"].pop("out")
    assert beam_manifest == local_manifest

    local_report = json.loads((local / "report.json").read_text())
    beam_report = json.loads((beam / "report.json").read_text())
    local_report["dedup"].pop("seconds")
    for volatile in ("seconds", "checkpoints", "runner"):
        local_report.pop(volatile, None), beam_report.pop(volatile, None)
    assert beam_report == local_report
    assert beam_report["input"] == 400 + 200 + 58 == beam_report["kept"] + beam_report["dropped"]
    assert beam_report["dropped_by_stage"]["fetch"] > 0 and beam_report["dropped_by_stage"]["read"] == 1
    assert beam_report["dropped_by_reason"]["exact-duplicate"] >= 25 and beam_report["dedup"]["near_verified"] >= 25
    assert beam_report["dropped_by_reason"]["lang:fr"] == 1 and beam_report["dropped_by_reason"]["malformed-json"] == 1
    assert beam_report["skipped_sources"] == [str(runs.tmp / "empty.csv")] and beam_report["pii"]["email"] >= 1
    assert len(beam_report["dedup"]["label_conflicts"]) >= 25
    assert (beam / "card.md").read_text() == (local / "card.md").read_text()
    event_file = "tensorboard/events.out.tfevents.0.moat-data-card"
    assert (beam / event_file).read_bytes() == (local / event_file).read_bytes()
