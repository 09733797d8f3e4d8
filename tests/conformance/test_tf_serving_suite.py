"""TensorFlow Serving's own end-to-end test file (tests/third_party/tensorflow_serving, unchanged) against
moat-model-server: every test passes but those that need what this server does not have (EXPECTED_TO_FAIL).
`make conformance` runs it; it is slow (each of ~30 tests starts a server), so the default suite skips it."""
import os
import sys
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

UPSTREAM = Path(__file__).resolve().parents[1] / "third_party" / "tensorflow_serving"
TEST_FILE = UPSTREAM / "tensorflow_serving" / "model_servers" / "tensorflow_model_server_test.py"
# test name -> why it cannot pass here (the README's compatibility section names the same).
EXPECTED_TO_FAIL = {
    "test_tf_text": "its model (tf_text_regression/01/saved_model.pb) is absent from the upstream snapshot",
    "test_profiler_service_with_valid_trace_request": "moat-model-server has no TensorFlow profiler service",
}


def run_upstream(tmp_path: Path, *selected: str) -> dict[str, str]:
    """Runs the upstream test file (or `selected` tests of it); returns {test name: passed|failed|skipped}."""
    runfiles = tmp_path / "runfiles" / "tf_serving"
    runfiles.mkdir(parents=True)
    (runfiles / "tensorflow_serving").symlink_to(UPSTREAM / "tensorflow_serving")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the project's ini: the upstream file has its own rules
    report = tmp_path / "junit.xml"
    env = {**os.environ, "TEST_SRCDIR": str(tmp_path / "runfiles"), "TEST_TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(UPSTREAM), os.environ.get("PYTHONPATH")])),
           "MOAT_MODEL_SERVER": str(Path(sys.executable).with_name("moat-model-server")),
           "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           # pytest's options go here, not on the command line: the upstream tests parse sys.argv as absl flags
           "PYTEST_ADDOPTS": f"-c {tmp_path / 'pytest.ini'} --rootdir {tmp_path} -q -p no:cacheprovider "
                             f"--junitxml={report}"}
    targets = [f"{TEST_FILE}::TensorflowModelServerTest::{name}" for name in selected] or [str(TEST_FILE)]
    subprocess.run([sys.executable, "-m", "pytest", *targets], cwd=tmp_path, env=env, timeout=1800)
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        kinds = {child.tag for child in case}
        outcomes[case.get("name")] = ("failed" if kinds & {"failure", "error"} else
                                      "skipped" if "skipped" in kinds else "passed")
    return outcomes


@pytest.mark.slow
def test_tf_serving_end_to_end_suite_passes(tmp_path):
    outcomes = run_upstream(tmp_path)
    assert len([o for o in outcomes.values() if o != "skipped"]) >= 30, outcomes
    failed = sorted(name for name, outcome in outcomes.items() if outcome == "failed")
    assert failed == sorted(EXPECTED_TO_FAIL), failed


def test_upstream_predict_classify_uds_and_tflite_cases(tmp_path):
    """One upstream test per cause the suite once failed on: a TF1 feed of another shape than the signature's (and a
    TF1 graph whose declared shapes contradict an op no signature runs: half_plus_three in testGoodModelConfig),
    Classify on a TF2 model without method names, gRPC over a Unix socket, a lone model.tflite with and without
    SignatureDefs."""
    cases = ("testPredictSavedModel", "testGoodModelConfig", "testClassifyTf2", "testPredictUDS",
             "testPredictOnTfLite", "testPredictWithSignatureDefOnTfLite")
    assert run_upstream(tmp_path, *cases) == {name: "passed" for name in cases}
