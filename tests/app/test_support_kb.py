"""The support knowledge base: the real Python FAQ from the catalog, each file format written here, the saved form,
and every user mistake as a DataError with a fix (records that cannot be used are skipped and reported)."""
import json
import os

import pytest

from moatkit.app.support.kb import (Entry, KnowledgeBase, load_knowledge_base, read_saved_knowledge_base,
                                    save_knowledge_base)
from moatkit.data.core.errors import DataError

FAQ_DEPARTMENTS = {"programming": 67, "design": 28, "library": 28, "general": 23, "extending": 17, "windows": 9,
                   "gui": 4, "installed": 2}

MARKDOWN = """# Billing

## How do I pay?
By card or bank transfer.
Paraphrases: payment methods | how can I pay

### Can I get a refund?
Yes, within 30 days:

```
# this is code, not a heading
```

# Accounts
Everything about your account.

## How do I reset my password?
Use the "Forgot password" link.
"""

CSV = """Question,Answer,Intent,Paraphrases,ID
How do I pay?,By card.,billing,payment methods|pay how,
"Can I get a refund?","Yes.
Within 30 days.",billing,,refund-1

Where is my order?,Track it in your account.,,,
"""

JSONL = """{"id": "pay", "question": "How do I pay?", "answer": "By card.", "department": "billing", \
"paraphrases": ["payment methods", "pay how"]}

{"question": "Where is my order?", "answer": "Track it.", "intent": "orders", \
"paraphrases": "order status | track order"}
"""

YAML = """license: CC-BY-4.0
entries:
  - question: How do I pay?
    answer: By card.
    department: billing
    paraphrases: [payment methods, pay how]
  - id: 42
    question: Where is my order?
    answer: |
      Track it
      in your account.
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.fixture(scope="module")
def python_faq():
    return load_knowledge_base("catalog:python-faq")


# === The shipped example ===

def test_python_faq_from_the_catalog(python_faq):
    report = python_faq.report
    assert report["inputs"]["catalog:python-faq"]["format"] == "dataset"
    assert report["inputs"]["catalog:python-faq"]["records"] == 179
    # "What is Python?" is asked in general.rst and again, answered differently, in installed.rst: a conflict
    assert report["conflicts"] == [{"question": "What is Python?", "kept": "general.rst.txt:15",
                                    "conflicting": "installed.rst.txt:5"}]
    assert len(python_faq.entries) == report["entries"] == 178
    assert report["by_department"] == FAQ_DEPARTMENTS
    assert list(report["by_department"]) == list(FAQ_DEPARTMENTS)  # largest first
    assert python_faq.departments() == sorted(FAQ_DEPARTMENTS)
    assert python_faq.license.startswith("PSF")
    assert report["skipped"] == report["duplicates"] == []
    assert all(e.answer.strip() and e.question.strip() for e in python_faq.entries)
    assert len({e.id for e in python_faq.entries}) == 178
    random = next(e for e in python_faq.entries if e.question == "How do I generate random numbers in Python?")
    assert (random.id, random.department, random.source) == ("python-faq-library-817", "library",
                                                             "library.rst.txt:817")
    assert "import random" in random.answer


def test_python_faq_strict_conflicts_name_both_sources():
    with pytest.raises(DataError, match=r"What is Python\?.*general\.rst\.txt:15 and installed\.rst\.txt:5"):
        load_knowledge_base("catalog:python-faq", strict_conflicts=True)


def test_a_dataset_dir_reads_like_its_catalog_name(python_faq):
    from moatkit.data.fetch import fetch
    kb = load_knowledge_base(fetch("python-faq"))
    assert kb.entries == python_faq.entries and kb.license == python_faq.license


# === Formats ===

def test_markdown(tmp_path):
    path = write(tmp_path, "faq.md", MARKDOWN)
    kb = load_knowledge_base(path)
    assert kb.entries == [
        Entry("faq-3", "How do I pay?", "By card or bank transfer.", "Billing", ("payment methods", "how can I pay"),
              f"{path}:3"),
        Entry("faq-7", "Can I get a refund?", "Yes, within 30 days:\n\n```\n# this is code, not a heading\n```",
              "Billing", (), f"{path}:7"),
        Entry("faq-17", "How do I reset my password?", 'Use the "Forgot password" link.', "Accounts", (),
              f"{path}:17")]
    assert kb.departments() == ["Accounts", "Billing"]
    assert kb.report["skipped"] == [{"source": f"{path}:14",
                                     "reason": "text under '# Accounts' is not under a question heading (## ...)"}]
    assert kb.report["inputs"] == {str(path): {"format": "markdown", "records": 3, "kept": 3, "license": None,
                                               "ignored_fields": []}}
    assert kb.report["by_department"] == {"Billing": 2, "Accounts": 1} and kb.license is None


def test_csv(tmp_path):
    path = write(tmp_path, "faq.csv", CSV)
    kb = load_knowledge_base(str(path))
    assert kb.entries == [
        Entry("faq-2", "How do I pay?", "By card.", "billing", ("payment methods", "pay how"), f"{path}:2"),
        Entry("refund-1", "Can I get a refund?", "Yes.\nWithin 30 days.", "billing", (), f"{path}:3"),
        Entry("faq-6", "Where is my order?", "Track it in your account.", None, (), f"{path}:6")]
    assert kb.report["by_department"] == {"billing": 2, "(none)": 1}
    assert kb.departments() == ["billing"]
    assert kb.report["skipped"] == []


def test_jsonl(tmp_path):
    path = write(tmp_path, "kb.jsonl", JSONL)
    kb = load_knowledge_base([path])
    assert kb.entries == [
        Entry("pay", "How do I pay?", "By card.", "billing", ("payment methods", "pay how"), f"{path}:1"),
        Entry("kb-3", "Where is my order?", "Track it.", "orders", ("order status", "track order"), f"{path}:3")]
    assert kb.report["inputs"][str(path)]["records"] == 2


def test_yaml_mapping_and_list(tmp_path):
    path = write(tmp_path, "kb.yaml", YAML)
    kb = load_knowledge_base(path)
    assert kb.entries == [
        Entry("kb-3", "How do I pay?", "By card.", "billing", ("payment methods", "pay how"), f"{path}:3"),
        Entry("42", "Where is my order?", "Track it\nin your account.", None, (), f"{path}:7")]
    assert kb.license == "CC-BY-4.0"
    listed = write(tmp_path, "list.yml", "- question: Hi?\n  answer: Hello.\n  intent: greeting\n")
    kb = load_knowledge_base(listed)
    assert kb.entries == [Entry("list-1", "Hi?", "Hello.", "greeting", (), f"{listed}:1")] and kb.license is None


def test_folder_and_merge_order(tmp_path):
    folder = tmp_path / "faq"
    (folder / "old").mkdir(parents=True)
    write(folder, "b.md", "## How do I pay?\nBy card.\n")
    write(folder, "a.csv", "question,answer,notes\nhow do I  PAY,by card,internal\n")
    write(folder, "notes.txt", "not an FAQ")
    write(folder, ".DS_Store", "hidden")
    yaml_path = write(tmp_path, "more.yaml", YAML)
    kb = load_knowledge_base([folder, yaml_path])
    assert list(kb.report["inputs"]) == [str(folder / "a.csv"), str(folder / "b.md"), str(yaml_path)]
    assert kb.report["inputs"][str(folder / "a.csv")]["ignored_fields"] == ["notes"]
    assert [e.source for e in kb.entries] == [f"{folder / 'a.csv'}:2", f"{yaml_path}:7"]
    assert kb.entries[0].department is None
    assert kb.report["duplicates"] == [{"kept": f"{folder / 'a.csv'}:2", "dropped": f"{folder / 'b.md'}:1"},
                                       {"kept": f"{folder / 'a.csv'}:2", "dropped": f"{yaml_path}:3"}]
    assert kb.report["skipped"] == [{"source": str(folder / "notes.txt"), "reason": "not read: not one of .md, .csv, "
                                     ".jsonl, .yaml, .yml"},
                                    {"source": str(folder / "old"), "reason": "not read: a folder (not read "
                                     "recursively)"}]
    assert kb.license == "CC-BY-4.0"  # the first input that has one


# === Saved form ===

def test_save_and_read_back(tmp_path, python_faq):
    small = load_knowledge_base(write(tmp_path, "faq.md", MARKDOWN))
    for kb in (python_faq, small):
        out = tmp_path / "out"
        save_knowledge_base(kb, out)
        assert sorted(os.listdir(out)) == ["kb.jsonl", "kb_report.json"]
        assert read_saved_knowledge_base(out) == kb
    lines = (tmp_path / "out" / "kb.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["paraphrases"] == ["payment methods", "how can I pay"]
    assert json.loads((tmp_path / "out" / "kb_report.json").read_text())["entries"] == 3


def test_saved_form_errors(tmp_path):
    with pytest.raises(DataError, match="holds no saved knowledge base"):
        read_saved_knowledge_base(tmp_path)
    save_knowledge_base(KnowledgeBase([Entry("a", "q?", "a.")], {"entries": 1}), tmp_path)
    (tmp_path / "kb.jsonl").write_text("")
    with pytest.raises(DataError, match="holds 0 entries but kb_report.json says 1"):
        read_saved_knowledge_base(tmp_path)


# === Mistakes ===

@pytest.mark.parametrize("name, content, match", [
    ("faq.txt", "question?\nanswer\n", r"faq\.txt: unsupported file type '\.txt'.*\.md, \.csv, \.jsonl, \.yaml, \.yml"),
    ("faq.md", "", r"faq\.md is empty"),
    ("faq.csv", b"question,answer\nq,\xff\xfe\n", r"faq\.csv is not UTF-8: byte 0xff at byte offset 18 \(line 2\) "
                                                  r"— re-save the file as UTF-8"),
    ("faq.csv", "question,reply\nq,a\n", r"faq\.csv: missing required column\(s\) answer; found header: question, "
                                         r"reply"),
    ("faq.csv", 'question,answer\nq,"open quote\n',
     r"faq\.csv:2: malformed CSV in the row starting at line 2 \(unexpected end of data\)"),
    ("faq.jsonl", '{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n{"question": "e", \n',
     r"faq\.jsonl:3: malformed JSON at line 3"),
    ("faq.jsonl", '["question", "answer"]\n', r"faq\.jsonl:1: expected a JSON object, found a list"),
    ("faq.yaml", "- question: What?\n  answer: [unclosed\n- question: x\n", r"faq\.yaml: YAML syntax error at line 3"),
    ("faq.yaml", "just a sentence\n", r"faq\.yaml: expected a list of entries .* found a str"),
    ("faq.yaml", "- just a sentence\n", r"faq\.yaml:1: expected a mapping, found a str"),
    ("faq.csv", "question,answer\n,,\n ,x\nq, \n", r"no usable entry in .*faq\.csv: 2 records read, 2 skipped \(first: "
                                             r".*faq\.csv:3: blank question\)"),
])
def test_file_mistakes(tmp_path, name, content, match):
    with pytest.raises(DataError, match=match) as raised:
        load_knowledge_base(write(tmp_path, name, content))
    assert raised.value.fix and "\n" not in raised.value.message


def test_path_mistakes(tmp_path):
    with pytest.raises(DataError, match=r"nope\.md does not exist"):
        load_knowledge_base(tmp_path / "nope.md")
    with pytest.raises(DataError, match="holds no FAQ file"):
        load_knowledge_base(tmp_path)
    with pytest.raises(DataError, match=r"faq\.md is given twice"):
        load_knowledge_base([tmp_path, write(tmp_path, "faq.md", MARKDOWN)])
    with pytest.raises(DataError, match="no knowledge-base input given"):
        load_knowledge_base([])
    with pytest.raises(DataError, match="unknown catalog name .no-such-faq."):
        load_knowledge_base("catalog:no-such-faq")


def test_unusable_records_are_skipped_and_reported(tmp_path):
    rows = ['{"id": "a", "question": "How do I pay?", "answer": "By card."}',
            '{"question": "how do  I PAY", "answer": "by card"}',
            '{"question": "How do I pay?!", "answer": "In cash."}',
            '{"question": "Blank?", "answer": "  "}',
            '{"id": "a", "question": "Other?", "answer": "Other."}',
            '{"question": "Long?", "answer": "' + "x" * 20_001 + '"}',
            '{"question": "Yes or no?", "answer": true}',
            '{"question": "Which?", "answer": "This.", "department": "x", "intent": "y"}',
            '{"question": "Kept?", "answer": "Kept.", "paraphrases": "  | kept |"}']
    path = write(tmp_path, "kb.jsonl", "\n".join(rows) + "\n")
    kb = load_knowledge_base(path)
    assert [(e.id, e.paraphrases) for e in kb.entries] == [("a", ()), ("kb-9", ("kept",))]
    assert kb.report["duplicates"] == [{"kept": f"{path}:1", "dropped": f"{path}:2"}]
    assert kb.report["conflicts"] == [{"question": "How do I pay?", "kept": f"{path}:1", "conflicting": f"{path}:3"}]
    assert kb.report["skipped"] == [
        {"source": f"{path}:4", "reason": "blank answer"},
        {"source": f"{path}:5", "reason": f"id 'a' is already used by {path}:1"},
        {"source": f"{path}:6", "reason": "answer is 20,001 characters (limit 20,000)"},
        {"source": f"{path}:7", "reason": "answer is a bool (True), not text: quote it"},
        {"source": f"{path}:8", "reason": "department 'x' and intent 'y' differ: give one"}]
    assert kb.report["inputs"][str(path)] == {"format": "jsonl", "records": 9, "kept": 2, "license": None,
                                              "ignored_fields": []}
    with pytest.raises(DataError, match=rf"How do I pay\?.*{path}:1 and {path}:3"):
        load_knowledge_base(path, strict_conflicts=True)
