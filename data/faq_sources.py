"""Python's FAQ (Debian python3.11-doc, html/_sources/faq/*.rst.txt) as question/answer records.

Each question heading with the prose under it is one record: text = the question, text_pair = the answer as plain
text, label = the department (the file it comes from). A hand-written reader because docutils would render the
Sphinx-only roles (:func:, :ref:) as errors and we need only headings, paragraphs and literal blocks.
"""
from __future__ import annotations

import re
from pathlib import Path

FAQ_DEPARTMENTS = ("general", "programming", "design", "library", "extending", "windows", "gui", "installed")

_UNDERLINE = re.compile(r"^([=\-~^\"'*+#])\1{2,}\s*$")
_ROLE = re.compile(r":[\w:.+-]+:`~?([^`<]*?)\s*(?:<[^>]*>)?`")  # :func:`breakpoint`, :ref:`text <target>`
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`__?")  # `text <https://...>`_
_REF = re.compile(r"`([^`]+)`_{1,2}")  # `text`_
_LITERAL = re.compile(r"``(.+?)``")
_DIRECTIVE = re.compile(r"^\s*\.\.(\s|$)")  # .. directive::, .. _target:, .. comment


def _headings(lines: list[str]) -> list[tuple[int, str, bool]]:
    """(line index, underline character, overlined) for every section heading."""
    found = []
    for i in range(1, len(lines)):
        title = lines[i - 1].strip()
        if (_UNDERLINE.match(lines[i]) and title and not _UNDERLINE.match(lines[i - 1])
                and len(lines[i].rstrip()) >= len(title)):
            found.append((i - 1, lines[i][0], i >= 2 and bool(_UNDERLINE.match(lines[i - 2]))))
    return found


def rst_to_text(block: str) -> str:
    """Sphinx reStructuredText → readable plain text: roles and links become their text, directives go, literal
    blocks and paragraphs stay."""
    kept = []
    for line in block.splitlines():
        if _DIRECTIVE.match(line):
            continue
        line = _LITERAL.sub(r"\1", _REF.sub(r"\1", _LINK.sub(r"\1", _ROLE.sub(r"\1", line))))
        kept.append(line.rstrip()[:-1] if line.rstrip().endswith("::") else line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def parse_faq_file(path: Path, department: str) -> tuple[list[dict], list[dict]]:
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    heads = [h for h in _headings(lines) if not h[2]]  # the overlined page title is not a question
    if not heads:
        return [], []
    question_char = heads[-1][1] if any(h[1] == "-" for h in heads) else None
    kept, dropped = [], []
    section = ""
    for n, (start, char, _) in enumerate(heads):
        title = lines[start].strip()
        end = heads[n + 1][0] if n + 1 < len(heads) else len(lines)
        body = rst_to_text("\n".join(lines[start + 2: end]))
        if char != question_char and not title.endswith("?"):
            section = title  # a section heading ("Threads", "Core Language") groups the questions under it
            continue
        rid = f"python-faq-{department}-{start + 1}"
        if not body:
            dropped.append({"id": rid, "reason": "question heading without an answer"})
            continue
        kept.append({"id": rid, "text": rst_to_text(title), "text_pair": body, "label": department,
                     "source": "python-faq", "meta": {"file": path.name, "line": start + 1, "section": section}})
    return kept, dropped


def parse_python_faq(root: Path) -> tuple[list[dict], list[dict]]:
    """root: the faq/ folder of the docs' _sources (one file per department)."""
    kept, dropped = [], []
    for department in FAQ_DEPARTMENTS:
        path = root / f"{department}.rst.txt"
        if not path.is_file():
            raise ValueError(f"{path.name} is missing under {root}")
        more, less = parse_faq_file(path, department)
        kept += more
        dropped += less
    return kept, dropped
