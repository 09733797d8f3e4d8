"""`moat bench` writes side-by-side measurements as JSON and a markdown table."""
import json

import pytest


def test_bench_tokenize(tmp_path):
    from moatkit.app.bench import BenchConfig, run_bench

    config = BenchConfig(repeats=1, benchmarks=["tokenize"], out_dir=str(tmp_path / "out"))
    results = run_bench(config, log=lambda line: None)
    tokenize = results["tokenize"]
    assert tokenize["sentences"] == 10_568
    assert tokenize["ours_sentences_per_s"] > 0 and tokenize["hf_fast_sentences_per_s"] > 0
    assert abs(tokenize["ratio_ours_over_hf"] - tokenize["ours_sentences_per_s"]
               / tokenize["hf_fast_sentences_per_s"]) < 0.05 * tokenize["ratio_ours_over_hf"]
    assert json.loads((tmp_path / "out" / "bench.json").read_text()) == results
    table = (tmp_path / "out" / "bench.md").read_text().splitlines()
    assert table[0].startswith("| benchmark |") and len(table) == 3  # header, rule, tokenize


@pytest.mark.slow  # two fresh fine-tuning processes scored on all 2,114 MR test sentences (~80 s); `make test-all`
def test_bench_finetune_and_skipped_serving(tmp_path, minilm_dir, mr_dir):
    from moatkit.app.bench import BenchConfig, run_bench

    results = run_bench(BenchConfig(repeats=1, model_base_path=str(tmp_path / "none"), out_dir=str(tmp_path),
                                    benchmarks=["serve", "finetune"], finetune_examples=96, finetune_epochs=1,
                                    max_length=32), log=lambda line: None)
    assert results["serve"] is None and results["tokenize"] is None
    finetune = results["finetune"]
    assert finetune["train_examples"] == 96 and finetune["test_examples"] == 2114
    assert finetune["ours_examples_per_s"] > 0 and finetune["naive_examples_per_s"] > 0
    assert 0.3 < finetune["naive_test_accuracy"] < 1 and 0.3 < finetune["ours_test_accuracy"] < 1
    assert "skipped: no model" in (tmp_path / "bench.md").read_text()
