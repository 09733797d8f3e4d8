"""Throughput of cleaning + dedup on the real corpora of the catalog, for `make bench`."""
from __future__ import annotations

import os
import time

from moatkit.data.clean import CleanConfig, clean_record
from moatkit.data.dedup import DedupConfig, deduplicate

# Every text dataset of the catalog (≈32 MB of text together): no single carrier holds 50 MB of text.
CORPUS = {"python-docs": "prose", "brown": "prose", "bible-en-de": "prose", "movie-dialog": "short-text",
          "mr": "short-text", "tweets": "short-text", "amazon": "short-text", "nyt": "short-text",
          "trec": "short-text"}


def _size(record: dict) -> int:
    return len(record["text"].encode("utf-8")) + len(record.get("text_pair", "").encode("utf-8"))


def bench_clean_dedup(*, corpus: dict[str, str] | None = None, max_records: int | None = None,
                      clean: CleanConfig | None = None, dedup: DedupConfig | None = None) -> dict:
    """Cleans and deduplicates the corpus in this process (one core) and returns docs/s and MB/s per stage.

    `corpus` maps catalog names to cleaning profiles; `max_records` caps each source (for a quick run).
    """
    from moatkit.data.dataset import read_records
    from moatkit.data.fetch import fetch

    corpus = corpus or CORPUS
    clean = clean or CleanConfig()
    dedup = dedup or DedupConfig(eval_sample=0)
    records, profiles = [], []
    for name, profile in corpus.items():
        rows = read_records(fetch(name, kind="dataset"))[:max_records]
        records += rows
        profiles += [clean.with_profile(profile)] * len(rows)
    in_bytes = sum(map(_size, records))
    # Wall time and this process's CPU time: on a shared machine the CPU time gives the per-core rate.
    started, cpu_started = time.perf_counter(), time.process_time()
    kept, reasons = [], {}
    for record, config in zip(records, profiles):
        cleaned, reason = clean_record(record, config)
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
        else:
            kept.append(cleaned)
    clean_seconds, clean_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    kept_bytes = sum(map(_size, kept))
    started, cpu_started = time.perf_counter(), time.process_time()
    result = deduplicate(kept, dedup)
    dedup_seconds, dedup_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    total, total_cpu = clean_seconds + dedup_seconds, clean_cpu + dedup_cpu
    mb = in_bytes / 1e6
    return {
        "corpus": list(corpus), "documents": len(records), "megabytes": round(mb, 2),
        "cores": 1, "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "clean": {"seconds": round(clean_seconds, 2), "cpu_seconds": round(clean_cpu, 2),
                  "docs_per_s": round(len(records) / clean_seconds, 1), "mb_per_s": round(mb / clean_seconds, 3),
                  "docs_per_cpu_s": round(len(records) / clean_cpu, 1), "mb_per_cpu_s": round(mb / clean_cpu, 3),
                  "kept": len(kept), "dropped_by_reason": reasons},
        "dedup": {"seconds": round(dedup_seconds, 2), "cpu_seconds": round(dedup_cpu, 2),
                  "docs_per_s": round(len(kept) / dedup_seconds, 1),
                  "mb_per_s": round(kept_bytes / 1e6 / dedup_seconds, 3),
                  "docs_per_cpu_s": round(len(kept) / dedup_cpu, 1),
                  "mb_per_cpu_s": round(kept_bytes / 1e6 / dedup_cpu, 3), "kept": len(result.kept),
                  "dropped": len(result.dropped), "clusters": len(result.clusters)},
        "clean_dedup": {"seconds": round(total, 2), "cpu_seconds": round(total_cpu, 2),
                        "docs_per_s": round(len(records) / total, 1), "mb_per_s": round(mb / total, 3),
                        # one process = one core: per-core rates count the CPU time this process got
                        "docs_per_s_per_core": round(len(records) / total_cpu, 1),
                        "mb_per_s_per_core": round(mb / total_cpu, 3)},
    }


def markdown(result: dict) -> str:
    rows = [("clean (ftfy+NFKC, PII, langid, quality filters)", result["clean"]),
            ("dedup (exact + MinHash LSH)", result["dedup"])]
    lines = [f"Corpus: {', '.join(result['corpus'])} — {result['documents']:,} documents, {result['megabytes']} MB, "
             f"one core (load average {result['load_average_1m']})", "",
             "| stage | wall s | CPU s | docs/s (wall) | docs per CPU-s | MB per CPU-s |", "|---|---|---|---|---|---|"]
    both = result["clean_dedup"]
    rows.append(("clean + dedup", {**both, "docs_per_cpu_s": both["docs_per_s_per_core"],
                                   "mb_per_cpu_s": both["mb_per_s_per_core"]}))
    lines += [f"| {label} | {r['seconds']} | {r['cpu_seconds']} | {r['docs_per_s']:,} | {r['docs_per_cpu_s']:,} | "
              f"{r['mb_per_cpu_s']} |" for label, r in rows]
    return "\n".join(lines) + "\n"
