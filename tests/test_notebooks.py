"""Every notebook runs top to bottom with small parameters (the `parameters`-tagged cell is replaced)."""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SMALL = {"00_quickstart.ipynb": "TRAIN_EXAMPLES = 800\nEVAL_EXAMPLES = 200\nEPOCHS = 1\nWORKDIR = {workdir!r}",
         "04_finetune.ipynb": "TRAIN_EXAMPLES = 96\nEVAL_EXAMPLES = 64\nEPOCHS = 1\nWORKDIR = {workdir!r}"}
EXPECTED = {"00_quickstart.ipynb": ["test accuracy", "max |REST - gRPC|"],
            "04_finetune.ipynb": ["test accuracy", "pearson", "['classify', 'serving_default']", "best on dev"]}


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs(name, tmp_path, minilm_dir, mr_dir, monkeypatch):
    assert name in SMALL, f"add small parameters for {name} to SMALL in this test"
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    parameters = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(parameters) == 1, "each notebook needs exactly one cell tagged 'parameters'"
    parameters[0].source = SMALL[name].format(workdir=str(tmp_path))
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")  # inherited by the kernel, as is the import path below
    root = str(NOTEBOOKS.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    for expected in EXPECTED[name]:
        assert expected in outputs, expected
