"""Every notebook runs top to bottom with small parameters (the `parameters`-tagged cell is replaced).

Where a notebook shows a workflow rather than what a model learns (04, 05, 07), its MODEL is the session's tiny BERT
(`tiny_bert_dir`, tests/conftest.py: 2 layers of 32, MiniLM's vocabulary) and a fine-tune is a batch or three;
notebooks 06 and 08 start from the tiny fine-tuned BERT (`tiny_run`) instead of training one. Notebook 00 keeps
MiniLM: it is the quick start a new user runs."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SMALL = {"00_quickstart.ipynb": "TRAIN_EXAMPLES = 400\nEVAL_EXAMPLES = 200\nEPOCHS = 1\nWORKDIR = {workdir!r}",
         "01_data.ipynb": "LIMIT = 600\nWORKDIR = {workdir!r}",
         "01_labeling.ipynb": "GOLD_BUDGET = 200\nMR_SAMPLE = 600\nSELECT = 20\nWORKDIR = {workdir!r}",
         "01_tokenizer.ipynb": "VOCAB_SIZE = 3000\nMAX_DOCUMENTS = 60\nPARITY_TEXTS = 1000\nWORKDIR = {workdir!r}",
         "02_transformer.ipynb": "TRAIN_PAIRS = 600\nSTEPS = 12\nTEST_PAIRS = 8\nWORKDIR = {workdir!r}",
         "03_pretrain.ipynb": "MAX_DOCUMENTS = 300\nVOCAB_SIZE = 600\nSTEPS = 15\nTRANSFER_EXAMPLES = 32\nWORKDIR = {workdir!r}",
         "04_finetune.ipynb": "TRAIN_EXAMPLES = 32\nEVAL_EXAMPLES = 32\nEPOCHS = 1\nWORKDIR = {workdir!r}\nMODEL = {tiny!r}",
         "05_serving.ipynb": "TRAIN_EXAMPLES = 32\nEVAL_EXAMPLES = 32\nEPOCHS = 1\nTFLITE = False\nWORKDIR = {workdir!r}\n"
                             "MODEL = {tiny!r}",
         "06_compress.ipynb": "BASELINE = {baseline!r}\nTRAIN_EXAMPLES = 64\nEVAL_EXAMPLES = 48\nEPOCHS = 1\nMETHODS = ['ptq']\n"
                              "PTQ_MODES = ['dynamic']\nLATENCY_REPEATS = 10\nEXPORT = False\nWORKDIR = {workdir!r}",
         "07_monitoring.ipynb": "TRAIN_EXAMPLES = 96\nEVAL_EXAMPLES = 64\nEPOCHS = 1\nSTREAM = 150\nWINDOW = 100\n"
                                "WORKDIR = {workdir!r}\nMODEL = {tiny!r}",
         "08_iterate.ipynb": "TRAIN_EXAMPLES = 0\nEPOCHS = 1\nMODEL = {tiny!r}\nBASE_RUN = {tiny_run!r}\n"
                             "SERVED_MR, SERVED_SHIFTED = 60, 180\nBUDGET = 40\nREPLAY = 200\nLEARNING_RATE = 1e-3\n"
                             "MAX_DROP, MIN_GAIN = 0.3, -1.0\nGOLDEN = 300\nLIVE_REQUESTS = 80\nCLIENTS, CLIENT_PAUSE_S = 2, 0.05\nWORKDIR = {workdir!r}",
         "09_recommend.ipynb": "EPOCHS, EVAL_EVERY = 2, 1\nMAX_LENGTH, DIM, LAYERS, HEADS = 20, 16, 1, 1\n"
                               "ARCH = 'sasrec'\nBASELINES = False\nWORKDIR = {workdir!r}",
         "10_support.ipynb": "ENCODER_MAX_LENGTH = 128\nROUTER = False\nROUTER_EPOCHS = 1\nOOS_DEV, OOS_TEST = 50, 100\n"
                             "REPO = {support_repo!r}\nWORKDIR = {workdir!r}",
         # the session's opinion_adapt settings, so adapt reuses its models and trains nothing
         "11_opinion.ipynb": "ADAPT_OUT = {opinion_out!r}\nREPO = {opinion_repo!r}\nGENERAL_MODEL = {general!r}\n"
                             "MAX_UNLABELLED = 800\nEPOCHS, MAX_LENGTH, LEARNING_RATE = 3, 32, 1e-4\n"
                             "GOLD_DEV, MAX_GOLD_TEST = 150, 300\nBACKGROUND = 3000\nBURST = 50\nWORKDIR = {workdir!r}"}
EXPECTED = {"00_quickstart.ipynb": ["test accuracy", "max |REST - gRPC|"],
            "01_data.ipynb": ["input = kept + dropped: 1200 =", "# Data card: sentiment", "dropped examples shown",
                              "clusters,", "cache hit in"],
            "01_labeling.ipynb": ["held-out accuracy: weighted", "Krippendorff alpha (interval):", "selected 20 of",
                                  "augmented copies keep labels: True"],
            "01_tokenizer.ipynb": ["in-graph exact match: 1000/1000", "masked fraction", "(8, 128) int32", "epoch 2 masks"],
            "03_pretrain.ipynb": ["eval MLM accuracy", "unigram baseline", "->",
                                  "loaded pretrained/ with TFBertForSequenceClassification", "random init"],
            "02_transformer.ipynb": ["max |ours - keras|", "greedy cached == uncached: True",
                                     "beam cached == uncached: True", "test BLEU", "exported:"],
            "04_finetune.ipynb": ["test accuracy", "pearson", "['classify', 'embed', 'serving_default']", "best on dev"],
            "05_serving.ipynb": ["REST predictions", "gRPC probabilities", "max |REST - gRPC|", "gRPC classify",
                                 "AVAILABLE", "processed_batch_size_count", "server stopped"],
            "06_compress.ipynb": ["ptq-dynamic: ", "x smaller than float32", "dynamic-range TFLite",
                                  "embedding_sparsity=0.9",
                                  "no TFLite variant exported"],
            "07_monitoring.ipynb": ["'embed'", "profile of 1056 dev texts", "mr: accuracy", "first alarm:",
                                    "most out-of-distribution texts", "moat_monitor_drift_alarm{"],
            "08_iterate.ipynb": ["selected 40:", "waiting for annotations", "'status': 'promoted'", "failed: 0",
                                 "## Live gate", "server stopped"],
            "09_recommend.ipynb": ["users, 1349 items", "| ours |", "REST top-10:", "gRPC == REST: True",
                                   "unknown_items: [1, 0]", "k too large -> 400", "server stopped"],
            "10_support.ipynb": ["| bm25 | 0.500 |", "hand off below", "action: answer", "action: handoff",
                                 "moat_support_turns_total{action=\"answer\"}", "'queued': True", "service stopped"],
            "11_opinion.ipynb": ["finance: reusing", "| finance | tflite |", "macro-F1 gain of the finance model",
                                 "label model on held-out gold", "first Yukos alert after the burst began",
                                 "300 items scored; 300 kept", "moat_opinion_items_total 300.0", "service stopped"]}


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs(name, tmp_path, minilm_dir, mr_dir, monkeypatch, request):
    assert name in SMALL, f"add small parameters for {name} to SMALL in this test"
    baseline = str(request.getfixturevalue("tiny_run") / "model") if "{baseline" in SMALL[name] else None
    tiny = str(request.getfixturevalue("tiny_bert_dir")) if "{tiny!r}" in SMALL[name] else None
    tiny_run = str(request.getfixturevalue("tiny_run")) if "{tiny_run" in SMALL[name] else None
    # notebook 10 reuses the encoder the session's support build exported (same checkpoint and max_length)
    support_repo = str(request.getfixturevalue("support_build")["repo"]) if "{support_repo" in SMALL[name] else None
    opinion = request.getfixturevalue("opinion_adapt") if "{opinion_out" in SMALL[name] else None
    general = request.getfixturevalue("small_export")["version_dir"] if "{general" in SMALL[name] else None
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    parameters = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(parameters) == 1, "each notebook needs exactly one cell tagged 'parameters'"
    parameters[0].source = SMALL[name].format(workdir=str(tmp_path), baseline=baseline, tiny=tiny, tiny_run=tiny_run,
                                                support_repo=support_repo, general=general,
                                                opinion_out=opinion and str(opinion["out"]),
                                                opinion_repo=opinion and str(opinion["repo"]))
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")  # inherited by the kernel, which imports the installed moatkit
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    for expected in EXPECTED[name]:
        assert expected in outputs, expected
