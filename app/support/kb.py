"""The support assistant's knowledge base: FAQ files read, checked, merged and reported.

Inputs, merged in order: `catalog:NAME`, a dataset dir (text = question, text_pair = answer, label = department),
Markdown (`# Department`, `## Question`, the text below is the answer, `Paraphrases: a | b` lines), CSV with a header
row, JSONL, YAML (a list of entries or `{license, entries}`), or a folder of such files. An unusable file raises
DataError with a fix; an unusable record is skipped and listed in the report, as are duplicates and conflicting
answers: nothing is dropped silently."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
from collections import Counter
from pathlib import Path

import yaml

from moatkit.data.core.errors import DataError
from moatkit.data.dataset import MANIFEST, read_manifest, read_records
from moatkit.data.fetch import fetch

SUFFIXES = (".md", ".csv", ".jsonl", ".yaml", ".yml")
MAX_CHARS = 20_000  # longer questions or answers are skipped: almost always a parse accident (an unclosed quote)
KB_FILE, REPORT_FILE = "kb.jsonl", "kb_report.json"
CATALOG_PREFIX = "catalog:"
FIELDS = ("id", "question", "answer", "department", "intent", "paraphrases")
NO_DEPARTMENT = "(none)"
_INPUTS = f"an FAQ file ({', '.join(SUFFIXES)}), a folder of them, a dataset dir or {CATALOG_PREFIX}NAME"
_FIX_FIELDS = "each entry needs a question and an answer (optional: id, department or intent, paraphrases)"


@dataclasses.dataclass(frozen=True)
class Entry:
    id: str
    question: str
    answer: str
    department: str | None = None
    paraphrases: tuple[str, ...] = ()
    source: str = ""  # "path:line" where the record starts


@dataclasses.dataclass
class KnowledgeBase:
    entries: list[Entry]
    report: dict
    license: str | None = None

    def departments(self) -> list[str]:
        return sorted({e.department for e in self.entries if e.department is not None})


@dataclasses.dataclass
class _Record:
    """One record as a reader found it, before validation."""
    source: str
    default_id: str
    fields: dict
    problem: str | None = None  # set by a reader that already knows the record is unusable


@dataclasses.dataclass
class _Parsed:
    """What one input gave: its records, its licence, and what it held that is not a record."""
    format: str
    records: list[_Record] = dataclasses.field(default_factory=list)
    license: str | None = None
    skipped: list[dict] = dataclasses.field(default_factory=list)
    ignored_fields: set[str] = dataclasses.field(default_factory=set)


class _Skip(Exception):
    """A record that cannot become an entry; the message is its reason in the report."""


# === Files ===

def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path} cannot be read ({err.strerror})", fix="check the file's permissions") from None
    bom = b"\xef\xbb\xbf" if data.startswith(b"\xef\xbb\xbf") else b""  # spreadsheet exports often start with one
    try:
        text = data[len(bom):].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start + len(bom)
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(f"{path} is not UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} (line {line})",
                        fix="re-save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path} is empty", fix="add FAQ entries to it, or leave it out of the inputs")
    return text


def _mapping_record(path: Path, line: int, value, kind: str) -> _Record:
    if not isinstance(value, dict):
        raise DataError(f"{path}:{line}: expected a {kind}, found {_kind_of(value)}", fix=_FIX_FIELDS)
    fields = {str(key).strip().lower(): item for key, item in value.items()}
    return _Record(f"{path}:{line}", f"{path.stem}-{line}", fields)


def _kind_of(value) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), f"a {type(value).__name__}")


def _read_jsonl(path: Path, text: str) -> _Parsed:
    parsed = _Parsed("jsonl")
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: malformed JSON at line {number}, column {err.colno}: {err.msg}",
                            fix='write one JSON object per line, e.g. {"question": "...", "answer": "..."}') from None
        parsed.records.append(_mapping_record(path, number, value, "JSON object"))
    return parsed


def _read_csv(path: Path, text: str) -> _Parsed:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # strict: an unclosed quote is an error
    parsed, start = _Parsed("csv"), 1
    try:
        header = [name.strip().lower() for name in next(reader)]
        _check_header(path, header)
        while True:
            start = reader.line_num + 1  # where the next row begins: a quoted cell may span lines
            if (row := next(reader, None)) is None:
                break
            if not any(cell.strip() for cell in row):
                continue  # an empty line, or a spreadsheet's empty row (",,")
            problem = (f"{len(row)} fields but the header has {len(header)} (quote values that contain commas)"
                       if len(row) > len(header) else None)
            parsed.records.append(_Record(f"{path}:{start}", f"{path.stem}-{start}", dict(zip(header, row)), problem))
    except csv.Error as err:
        raise DataError(f"{path}:{start}: malformed CSV in the row starting at line {start} ({err})",
                        fix='enclose values that hold commas, quotes or line breaks in double quotes ("")') from None
    return parsed


def _check_header(path: Path, header: list[str]) -> None:
    missing = [name for name in ("question", "answer") if name not in header]
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)}; found header: "
                        f"{', '.join(header) or '(none)'}",
                        fix="the first row must name the columns, comma-separated: question, answer (optional: "
                            "id, department or intent, paraphrases)")
    repeated = sorted(name for name, n in Counter(header).items() if n > 1 and name)
    if repeated:
        raise DataError(f"{path}: column(s) {', '.join(repeated)} appear twice in the header", fix="rename one")


def _read_yaml(path: Path, text: str) -> _Parsed:
    loader = yaml.SafeLoader(text)  # the loader safe_load uses; its node tree also gives each entry's line
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise DataError(f"{path}: YAML syntax error{where}: {getattr(err, 'problem', None) or err}",
                        fix="fix the YAML there (indentation, a ':' inside an unquoted value)") from None
    finally:
        loader.dispose()
    parsed = _Parsed("yaml")
    if isinstance(data, dict) and isinstance(data.get("entries"), list):
        license = data.get("license")
        parsed.license = None if license is None else str(license)
        parsed.ignored_fields = {str(key) for key in data} - {"license", "entries"}
        node = next(value for key, value in node.value if key.value == "entries")
        data = data["entries"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of entries or a mapping with 'entries', found {_kind_of(data)}",
                        fix="write `- question: ...` / `  answer: ...` items, or `license: ...` and `entries:` "
                            "holding them")
    for item, child in zip(data, node.value):
        parsed.records.append(_mapping_record(path, child.start_mark.line + 1, item, "mapping"))
    return parsed


# === Markdown ===

_HEADING = re.compile(r"^(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_PARAPHRASES = re.compile(r"^\s*Paraphrases:(.*)$")


def _markdown_sections(text: str) -> list[tuple[int, int, str, list[str]]]:
    """(line, heading level or 0 before the first heading, title, body lines); a `#` in a code block is code."""
    sections = [(1, 0, "", [])]
    fence = None
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        marker = _FENCE.match(line)
        if marker:
            fence = None if fence == marker.group(1) else fence or marker.group(1)
        heading = None if fence or marker else _HEADING.match(line)
        if heading:
            sections.append((number, len(heading.group(1)), (heading.group(2) or "").strip(), []))
        else:
            sections[-1][3].append(line)
    return sections


def _read_markdown(path: Path, text: str) -> _Parsed:
    parsed = _Parsed("markdown")
    department = None
    for line, level, title, body in _markdown_sections(text):
        if level >= 2:
            parsed.records.append(_markdown_record(path, line, title, body, department))
            continue
        if level == 1:
            department = title or None
        if any(part.strip() for part in body):
            where = f"under '# {title}'" if level else "before the first heading"
            parsed.skipped.append({"source": f"{path}:{line}",
                                   "reason": f"text {where} is not under a question heading (## ...)"})
    return parsed


def _markdown_record(path: Path, line: int, title: str, body: list[str], department: str | None) -> _Record:
    answer, paraphrases = [], []
    for text in body:
        found = _PARAPHRASES.match(text)
        if found:
            paraphrases += found.group(1).split("|")
        else:
            answer.append(text)
    fields = {"question": title, "answer": "\n".join(answer), "department": department, "paraphrases": paraphrases}
    return _Record(f"{path}:{line}", f"{path.stem}-{line}", fields)


# === Dataset dirs ===

def _read_dataset(data_dir: Path, label: str) -> _Parsed:
    manifest = read_manifest(data_dir)
    schema = manifest.get("schema")
    if isinstance(schema, list) and "text_pair" not in schema:
        raise DataError(f"dataset {label} has no answers (no text_pair field; it has {', '.join(schema)})",
                        fix="use a question/answer dataset: text = question, text_pair = answer")
    parsed = _Parsed("dataset", license=manifest.get("license"))
    for number, record in enumerate(read_records(data_dir), 1):
        meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
        source = f"{meta['file']}:{meta['line']}" if meta.get("file") and meta.get("line") else f"{label}:{number}"
        fields = {"id": record.get("id"), "question": record.get("text"), "answer": record.get("text_pair"),
                  "department": record.get("label"), "paraphrases": meta.get("paraphrases")}
        parsed.records.append(_Record(source, f"{data_dir.name}-{number}", fields))
    return parsed


# === Records → entries ===

def _text(fields: dict, name: str, *, required: bool = False) -> str | None:
    value = fields.get(name)
    if not required and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # an id or department written as a number
    if value is not None and not isinstance(value, str):
        raise _Skip(f"{name} is {_kind_of(value)} ({value!r}), not text: quote it")
    value = (value or "").strip()
    if required and not value:
        raise _Skip(f"blank {name}" if name in fields else f"no {name}")
    if len(value) > MAX_CHARS:
        raise _Skip(f"{name} is {len(value):,} characters (limit {MAX_CHARS:,})")
    return value or None


def _paraphrases(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split("|")
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise _Skip("paraphrases must be a list of strings or one '|'-separated string")
    return tuple(item.strip() for item in value if item.strip())


def _entry(record: _Record) -> Entry:
    if record.problem:
        raise _Skip(record.problem)
    fields = record.fields
    question, answer = _text(fields, "question", required=True), _text(fields, "answer", required=True)
    department, intent = _text(fields, "department"), _text(fields, "intent")
    if department and intent and department != intent:
        raise _Skip(f"department '{department}' and intent '{intent}' differ: give one")
    return Entry(id=_text(fields, "id") or record.default_id, question=question, answer=answer,
                 department=department or intent, paraphrases=_paraphrases(fields.get("paraphrases")),
                 source=record.source)


def normalise(text: str) -> str:
    """The comparison key of questions and answers: casefolded, whitespace collapsed, trailing ?.! dropped."""
    return re.sub(r"\s+", " ", text.casefold()).strip().rstrip("?.! ")


class _Builder:
    """Merges inputs in order, keeping the first of each question and accounting for everything else."""

    def __init__(self, strict_conflicts: bool):
        self.strict = strict_conflicts
        self.entries: list[Entry] = []
        self.inputs: dict[str, dict] = {}
        self.skipped: list[dict] = []
        self.duplicates: list[dict] = []
        self.conflicts: list[dict] = []
        self._by_question: dict[str, Entry] = {}
        self._id_sources: dict[str, str] = {}

    def add_input(self, key: str, parsed: _Parsed) -> None:
        if key in self.inputs:
            raise DataError(f"{key} is given twice (by name, or also through its folder)", fix="give each input once")
        self.skipped += parsed.skipped
        unknown = {name for record in parsed.records for name in record.fields} - set(FIELDS)
        before = len(self.entries)
        for record in parsed.records:
            try:
                self._add(_entry(record))
            except _Skip as skip:
                self.skipped.append({"source": record.source, "reason": str(skip)})
        self.inputs[key] = {"format": parsed.format, "records": len(parsed.records),
                            "kept": len(self.entries) - before, "license": parsed.license,
                            "ignored_fields": sorted(parsed.ignored_fields | unknown)}

    def _add(self, entry: Entry) -> None:
        first = self._by_question.get(normalise(entry.question))
        if first is not None and normalise(first.answer) == normalise(entry.answer):
            self.duplicates.append({"kept": first.source, "dropped": entry.source})
        elif first is not None and self.strict:
            raise DataError(f"conflicting answers to the question '{first.question}': {first.source} and "
                            f"{entry.source}", fix="keep one answer (or merge the two), or load without "
                                                   "strict_conflicts to keep the first")
        elif first is not None:
            self.conflicts.append({"question": first.question, "kept": first.source, "conflicting": entry.source})
        elif entry.id in self._id_sources:
            raise _Skip(f"id '{entry.id}' is already used by {self._id_sources[entry.id]}")
        else:
            self._by_question[normalise(entry.question)] = entry
            self._id_sources[entry.id] = entry.source
            self.entries.append(entry)

    def report(self) -> dict:
        counts = Counter(e.department or NO_DEPARTMENT for e in self.entries)
        return {"inputs": self.inputs, "entries": len(self.entries),
                "by_department": dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))),
                "skipped": self.skipped, "duplicates": self.duplicates, "conflicts": self.conflicts}


# === Loading ===

_READERS = {".md": _read_markdown, ".csv": _read_csv, ".jsonl": _read_jsonl, ".yaml": _read_yaml, ".yml": _read_yaml}


def _read_file(path: Path) -> _Parsed:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix or '(no suffix)'}'", fix=f"give {_INPUTS}")
    return reader(path, _decode(path))


def _folder_files(folder: Path, skipped: list[dict]) -> list[Path]:
    files = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue  # hidden files (.DS_Store, editor swap files) are never FAQ data
        if child.is_file() and child.suffix.lower() in _READERS:
            files.append(child)
        else:
            what = "a folder (not read recursively)" if child.is_dir() else f"not one of {', '.join(SUFFIXES)}"
            skipped.append({"source": str(child), "reason": f"not read: {what}"})
    if not files:
        raise DataError(f"folder {folder} holds no FAQ file", fix=f"put {', '.join(SUFFIXES)} files in it")
    return files


def _read_input(item: str | Path, builder: _Builder) -> None:
    if isinstance(item, str) and item.startswith(CATALOG_PREFIX):
        builder.add_input(item, _read_dataset(fetch(item[len(CATALOG_PREFIX):], kind="dataset"), item))
        return
    path = Path(item)
    if not path.exists():
        raise DataError(f"{path} does not exist", fix=f"check the path; give {_INPUTS}")
    if path.is_dir() and (path / MANIFEST).is_file():
        builder.add_input(str(path), _read_dataset(path, str(path)))
    elif path.is_dir():
        for child in _folder_files(path, builder.skipped):
            builder.add_input(str(child), _read_file(child))
    else:
        builder.add_input(str(path), _read_file(path))


def load_knowledge_base(paths: list[str | Path] | str | Path, *, strict_conflicts: bool = False) -> KnowledgeBase:
    """Reads and merges the inputs in order. A later entry with an already seen question is a duplicate (same
    answer: dropped) or a conflict (another answer: the first is kept, or DataError with `strict_conflicts`)."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise DataError("no knowledge-base input given", fix=f"give {_INPUTS}")
    builder = _Builder(strict_conflicts)
    for item in items:
        _read_input(item, builder)
    if not builder.entries:
        read = sum(entry["records"] for entry in builder.inputs.values())
        first = f" (first: {builder.skipped[0]['source']}: {builder.skipped[0]['reason']})" if builder.skipped else ""
        raise DataError(f"no usable entry in {', '.join(map(str, items))}: {read} records read, "
                        f"{len(builder.skipped)} skipped{first}", fix=_FIX_FIELDS)
    license = next((i["license"] for i in builder.inputs.values() if i["license"]), None)
    return KnowledgeBase(builder.entries, builder.report(), license)


# === Saved form ===

def save_knowledge_base(kb: KnowledgeBase, out_dir: Path) -> None:
    """out_dir/kb.jsonl (one entry per line) and out_dir/kb_report.json (the licence and the report)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({**dataclasses.asdict(e), "paraphrases": list(e.paraphrases)}, ensure_ascii=False) + "\n"
             for e in kb.entries]
    report = json.dumps({"license": kb.license, **kb.report}, indent=2, ensure_ascii=False) + "\n"
    for name, text in ((KB_FILE, "".join(lines)), (REPORT_FILE, report)):  # each written whole, then renamed
        partial = out_dir / f".{name}.{os.getpid()}.partial"
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, out_dir / name)


def _saved_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path.parent} holds no saved knowledge base ({path.name} is missing)",
                        fix="write it with save_knowledge_base")
    return path.read_text(encoding="utf-8")


def read_saved_knowledge_base(out_dir: Path) -> KnowledgeBase:
    out_dir = Path(out_dir)
    fix = "save the knowledge base again"
    try:
        report = json.loads(_saved_text(out_dir / REPORT_FILE))
        license = report.pop("license", None)
        entries = []
        for line in _saved_text(out_dir / KB_FILE).split("\n"):
            if line.strip():
                fields = json.loads(line)
                entries.append(Entry(**{**fields, "paraphrases": tuple(fields.get("paraphrases") or ())}))
    except (json.JSONDecodeError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise DataError(f"the knowledge base saved in {out_dir} is damaged ({err})", fix=fix) from None
    if report.get("entries") != len(entries):
        raise DataError(f"{out_dir}: {KB_FILE} holds {len(entries)} entries but {REPORT_FILE} says "
                        f"{report.get('entries')}", fix=fix)
    return KnowledgeBase(entries, report, license)
