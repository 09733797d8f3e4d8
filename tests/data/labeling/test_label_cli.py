"""`moat data label …` end to end on real data: select → annotate → merge → weak, with one-line errors."""
import csv
import json

import numpy as np

from moatkit.app.cli import main
from moatkit.data.dataset import read_manifest, read_records, write_dataset

LABELS = ["negative", "positive"]


def test_select_merge_weak_cycle(mr_dir, tmp_path, capsys):
    everything = read_records(mr_dir)  # sorted positive first: shuffle (seeded) so the seeds hold both classes
    records = [everything[i] for i in np.random.default_rng(0).permutation(len(everything))[:800]]
    gold = {r["id"]: r["label"] for r in records}
    raw = tmp_path / "raw"  # the unlabelled pool, plus 40 labelled seeds
    write_dataset(raw, [r if i < 40 else {k: v for k, v in r.items() if k != "label"} for i, r in enumerate(records)],
                  name="mr-raw", labels=LABELS, provenance={}, license="research")
    todo = tmp_path / "todo.csv"
    assert main(["data", "label", "select", str(raw), "--out", str(todo), "-n", "30"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["labelled"] == 40 and line["pool"] == 760 and line["selected"] == 30 and line["strategy"] == "margin"
    assert line["mean_confidence_selected"] < line["mean_confidence_pool"]
    rows = list(csv.DictReader(todo.open()))
    assert len(rows) == 30 and all(r["label"] == "" and r["suggestion"] in LABELS for r in rows)
    for row in rows[:25]:  # the annotator answers 25 and skips 5
        row["label"] = gold[row["id"]]
    with todo.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["data", "label", "merge", str(raw), str(todo), "--out", str(tmp_path / "v2")]) == 0
    assert json.loads(capsys.readouterr().out)["labelled"] == 25
    assert read_manifest(tmp_path / "v2")["counts"]["records"] == 800
    assert sum(1 for r in read_records(tmp_path / "v2") if r.get("label")) == 65

    lfs = tmp_path / "lfs.py"
    lfs.write_text("from moatkit.data.labeling.weak import ABSTAIN, labeling_function\n\n"
                   "@labeling_function()\ndef praise(text):\n"
                   "    return 'positive' if any(w in text.lower() for w in ('best', 'great', 'funny')) else ABSTAIN\n\n"
                   "@labeling_function()\ndef scorn(text):\n"
                   "    return 'negative' if any(w in text.lower() for w in ('bad', 'dull', 'worst')) else ABSTAIN\n")
    out = tmp_path / "weak"
    assert main(["data", "label", "weak", str(tmp_path / "v2"), "--lfs", str(lfs), "--out", str(out),
                 "--set", "gold_budget=20"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["label_model"] == "weighted" and line["gold_dev_records"] == 20 and 0 < line["coverage"] < 1
    assert read_manifest(out)["counts"]["records"] + json.loads((out / "report.json").read_text())["dropped"] == 800

    # Mistakes: one line naming the problem, exit status 2.
    assert main(["data", "label", "weak", str(tmp_path / "v2"), "--lfs", str(lfs), "--out", str(out),
                 "--set", "gold_budget=500"]) == 2
    assert "gold_budget=500 needs that many records" in capsys.readouterr().err
    todo.write_text(f"id,text,label\n{rows[0]['id']},x,Positive\n")
    assert main(["data", "label", "merge", str(raw), str(todo), "--out", str(tmp_path / "v3")]) == 2
    assert f"label 'Positive' for id '{rows[0]['id']}' is not one of" in capsys.readouterr().err
