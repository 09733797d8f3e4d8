"""report.json (everything measured) and report.md (the tables a person reads) of a support build."""
from __future__ import annotations

import json
from pathlib import Path


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def report_markdown(report: dict) -> str:
    retrieval, routing, scope = report["retrieval"], report["routing"], report["out_of_scope"]
    lines = [f"# Support build: {report['support']['entries']} entries, seed {report['seed']}", "",
             f"Split (questions): {report['split']}", "",
             f"## Answer retrieval ({retrieval['index']} indexed; the FAQ's questions as queries)", "",
             "| system | R@1 all | R@5 all | MRR@10 all | R@1 test | MRR@10 test |", "|---|---|---|---|---|---|"]
    for name, row in retrieval["systems"].items():
        a, t = row["all"], row["test"]
        lines.append(f"| {name} | {a['recall@1']:.3f} | {a['recall@5']:.3f} | {a['mrr@10']:.3f} | "
                     f"{t['recall@1']:.3f} | {t['mrr@10']:.3f} |")
    lines += ["", f"Hybrid = cosine + {retrieval['hybrid_weight']} × BM25 (row-normalised), weight fitted on dev.", "",
              f"## Department routing ({routing['test_questions']} test questions)", "",
              f"router {_pct(routing.get('router'))}, nearest entry's department {_pct(routing['nearest_entry'])}, "
              f"majority class ({routing['majority_class']}) {_pct(routing['majority'])}", "",
              f"## Out of scope ({scope['test_in_scope']} in-scope vs {scope['test_out_of_scope']} out-of-scope test "
              f"texts: {', '.join(scope['out_of_scope_sources'])})", "",
              f"AUROC {scope['auroc']:.3f} (top score alone {scope['auroc_top_score_only']:.3f}); false-accept rate "
              f"{_pct(scope['false_accept_at_recall'])} at {_pct(scope['recall'])} in-scope recall; at the dev "
              f"threshold: in-scope recall {_pct(scope['in_scope_recall_at_dev_threshold'])}, false accepts "
              f"{_pct(scope['false_accept_at_dev_threshold'])}.", "",
              f"In-scope test turns: {scope['in_scope_actions']}; direct answers right {_pct(scope['answer_precision'])}.",
              ""]
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    (Path(out) / "report.json").write_text(json.dumps(report, indent=2))
    (Path(out) / "report.md").write_text(report_markdown(report))
