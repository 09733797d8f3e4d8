"""The support chat service over HTTP, in-process: a real Assistant (the exported MiniLM sentence encoder, a slice
of the real Python FAQ, a hand-set policy) behind SupportApi on serving/rest.py's server. No model server here:
tests/integration/test_support_browser.py runs the page end to end through one."""
import http.client
import json
from pathlib import Path

import numpy as np
import pytest

from moatkit.app.support.config import ServeConfig
from moatkit.app.support.service import LOG_FILE, SupportApi

MARKUP_ANSWER = 'Write <b>bold</b> like this; never <script>alert(1)</script> or <img src=x onerror="window.__pwned=1">.'
MARKUP_QUESTION = "How do I make text bold in the chat window?"
OFF_TOPIC = "What is the capital of Mongolia?"


def faq_entries():
    """The first two questions of each Python FAQ department, and one entry whose answer is markup."""
    from moatkit.app.support.kb import Entry, load_knowledge_base

    entries, seen = [], {}
    for entry in load_knowledge_base(["catalog:python-faq"]).entries:
        if seen.setdefault(entry.department, 0) < 2:
            seen[entry.department] += 1
            entries.append(entry)
    return entries + [Entry(id="markup", question=MARKUP_QUESTION, answer=MARKUP_ANSWER, department="gui",
                            source="markup.md:3")]


def small_assistant(encoder_dir: Path):
    """A real Assistant with in-process models: the session build's encoder (tests/conftest.py `support_build`)
    over a small FAQ with markup in an answer, and a hand-set policy (the fitted one is the build's test)."""
    from moatkit.app.support.assistant import Assistant
    from moatkit.app.support.index import AnswerIndex, index_keys
    from moatkit.app.support.models import LocalModels
    from moatkit.app.support.policy import Policy

    entries = faq_entries()
    models = LocalModels(encoder_dir)
    texts, owners, kinds = index_keys(entries)
    index = AnswerIndex(models.encode(texts), np.asarray(owners), kinds, answers=[e.answer for e in entries])
    policy = Policy(weights=[10.0, 5.0], bias=-6.0, handoff_below=0.5, clarify_below=0.02)
    return Assistant(entries=entries, index=index, policy=policy, models=models, top_k=3)


@pytest.fixture(scope="module")
def assistant(support_build):
    return small_assistant(support_build["repo"] / "support-encoder" / "1")


def serve(api: SupportApi, config: ServeConfig):
    from moatkit.serving.rest import make_http_server, serve_in_thread

    server = make_http_server(api, port=0, host="127.0.0.1", max_request_bytes=config.max_request_bytes)
    serve_in_thread(server)
    return server


@pytest.fixture(scope="module")
def service(assistant, tmp_path_factory):
    config = ServeConfig(port=0, turns_per_second=2.0, burst=8)
    log_path = tmp_path_factory.mktemp("support-logs") / LOG_FILE
    api = SupportApi(assistant, config, log_path=log_path)
    server = serve(api, config)
    yield {"api": api, "port": server.server_address[1], "log_path": log_path, "config": config}
    server.shutdown()
    server.server_close()
    api.close()


def call(port: int, method: str, path: str, body=None, *, raw: bytes | None = None):
    """(status, content type, parsed JSON or text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    connection.request(method, path, body=payload, headers={"Content-Type": "application/json"} if payload else {})
    response = connection.getresponse()
    text, ctype = response.read().decode("utf-8"), response.getheader("Content-Type")
    connection.close()
    return response.status, ctype, json.loads(text) if ctype == "application/json" else text


def chat(service, session: str, message: str):
    return call(service["port"], "POST", "/api/chat", {"session": session, "message": message})


def metric(text: str, line_start: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(line_start)).rsplit(" ", 1)[1])


def test_page_static_files_health_and_unknown_paths(service):
    port = service["port"]
    status, ctype, page = call(port, "GET", "/")
    assert (status, ctype) == (200, "text/html; charset=utf-8")
    assert "Content-Security-Policy" in page and "default-src 'self'" in page and '/static/chat.js' in page
    status, ctype, script = call(port, "GET", "/static/chat.js")
    assert (status, ctype) == (200, "text/javascript; charset=utf-8")
    assert "innerHTML" not in script and "textContent" in script
    assert call(port, "GET", "/static/chat.css")[:2] == (200, "text/css; charset=utf-8")
    assert call(port, "GET", "/healthz") == (200, "application/json", {"status": "ok"})
    assert call(port, "GET", "/static/../service.py") == (404, "application/json",
                                                          {"error": "no such path: /static/../service.py"})
    assert call(port, "GET", "/api/chat") == (405, "application/json", {"error": "/api/chat takes POST, not GET"})


def test_a_faq_question_is_answered_with_its_entry_and_source(service, assistant):
    entry = assistant.entries[2]
    status, _, turn = chat(service, "faq-1", entry.question)
    assert status == 200
    assert set(turn) == {"turn_id", "session", "action", "answer", "candidates", "confidence", "department",
                         "latency_ms", "timings_ms", "handoff"}
    assert (turn["session"], turn["action"], turn["candidates"], turn["handoff"]) == ("faq-1", "answer", [], None)
    assert {k: turn["answer"][k] for k in ("entry_id", "question", "answer", "department", "source")} == {
        "entry_id": entry.id, "question": entry.question, "answer": entry.answer, "department": entry.department,
        "source": entry.source}
    assert turn["department"] == entry.department and turn["confidence"] > 0.9 and turn["latency_ms"] > 0
    status, _, history = call(service["port"], "GET", "/api/history?session=faq-1")
    assert status == 200 and [t["turn_id"] for t in history["turns"]] == [turn["turn_id"]]
    assert history["turns"][0]["message"] == entry.question and history["turns"][0]["feedback"] is None
    assert call(service["port"], "GET", "/api/history?session=never-seen")[2] == {"session": "never-seen", "turns": []}


def test_off_topic_text_is_not_answered_confidently(service, assistant):
    _, _, faq = chat(service, "scope-1", assistant.entries[0].question)
    status, _, off = chat(service, "scope-1", OFF_TOPIC)
    assert status == 200 and off["confidence"] < faq["confidence"]
    assert off["action"] == "handoff", off
    assert off["answer"] is None and off["handoff"]["queued"] is True and off["handoff"]["position"] >= 1


def test_request_limits_and_malformed_bodies(service):
    port, limit = service["port"], service["config"].max_message_chars
    status, _, error = call(port, "POST", "/api/chat", raw=b"x" * (1 << 20))
    assert status == 413 and "exceeds the limit of 65536 bytes" in error["error"]
    assert chat(service, "limits-1", "y" * (limit + 1)) == (400, "application/json", {
        "error": f"'message' has {limit + 1} characters; the limit is {limit}"})
    assert chat(service, "limits-1", "how " * (limit // 4))[0] == 200  # exactly at the limit
    bad = {
        b'\xff\xfe{"session": "a"}': "the request body is not UTF-8 (byte 0)",
        b'{"session": "a", "message": ': "the request body is not JSON: Expecting value at character 28",
        b'["a list"]': "the request body must be a JSON object",
        b'{"session": "a"}': "'message' must be a string",
        b'{"session": "a", "message": "   "}': "'message' is empty",
        b'{"session": "a", "message": 7}': "'message' must be a string",
        b'{"session": "a", "message": "\\ud800"}': "'message' is not valid Unicode text",
        b'{"session": "a b", "message": "hi"}': "'session' must be 1 to 64 characters of A-Z a-z 0-9 _ -",
        b'{"session": "", "message": "hi"}': "'session' must be 1 to 64 characters of A-Z a-z 0-9 _ -",
        b'{"message": "hi"}': "'session' must be 1 to 64 characters of A-Z a-z 0-9 _ -",
        ('{"session": "%s", "message": "hi"}' % ("s" * 65)).encode(): "'session' must be 1 to 64 characters "
                                                                        "of A-Z a-z 0-9 _ -",
    }
    for body, message in bad.items():
        assert call(port, "POST", "/api/chat", raw=body) == (400, "application/json", {"error": message}), body


def test_a_flooding_session_gets_429_while_another_is_served(service, assistant):
    question = assistant.entries[1].question
    results = [chat(service, "flood-1", question) for _ in range(20)]
    statuses = [status for status, _, _ in results]
    assert statuses[:8] == [200] * 8 and statuses.count(429) >= 5, statuses
    limited = next(body for status, _, body in results if status == 429)
    assert set(limited) == {"error", "retry_after_s"} and 0 < limited["retry_after_s"] <= 0.5
    assert limited["error"].startswith("too many messages: wait")
    assert chat(service, "flood-2", question)[0] == 200
    assert metric(call(service["port"], "GET", "/metrics")[2],
                  'moat_support_rejected_requests_total{reason="rate_limited"}') >= statuses.count(429)


def test_feedback_unknown_real_and_duplicate(service, assistant):
    port = service["port"]
    before = metric(call(port, "GET", "/metrics")[2], 'moat_support_feedback_total{helpful="true"}')
    _, _, turn = chat(service, "feedback-1", assistant.entries[4].question)
    unknown = call(port, "POST", "/api/feedback", {"session": "feedback-1", "turn_id": "nope", "helpful": True})
    assert unknown[:2] == (404, "application/json") and "has no turn 'nope'" in unknown[2]["error"]
    other = call(port, "POST", "/api/feedback", {"session": "feedback-2", "turn_id": turn["turn_id"], "helpful": True})
    assert other[0] == 404  # a turn id only counts in its own session
    assert call(port, "POST", "/api/feedback", {"session": "feedback-1", "turn_id": turn["turn_id"],
                                                "helpful": "yes"})[0] == 400
    assert call(port, "POST", "/api/feedback", {"session": "feedback-1", "turn_id": turn["turn_id"], "helpful": True,
                                                "entry_id": "not-shown"})[0] == 400
    ok = call(port, "POST", "/api/feedback", {"session": "feedback-1", "turn_id": turn["turn_id"], "helpful": True})
    assert ok == (200, "application/json", {"recorded": True, "turn_id": turn["turn_id"], "helpful": True,
                                            "entry_id": assistant.entries[4].id})
    again = call(port, "POST", "/api/feedback", {"session": "feedback-1", "turn_id": turn["turn_id"], "helpful": False})
    assert again[0] == 409
    metrics = call(port, "GET", "/metrics")[2]
    assert metric(metrics, 'moat_support_feedback_total{helpful="true"}') == before + 1
    assert call(port, "GET", "/api/history?session=feedback-1")[2]["turns"][0]["feedback"] == {
        "helpful": True, "entry_id": assistant.entries[4].id}


def test_handoff_is_queued_once_per_session_and_counted(service, assistant):
    port, entry = service["port"], assistant.entries[6]
    _, _, turn = chat(service, "handoff-1", entry.question)
    first = call(port, "POST", "/api/handoff", {"session": "handoff-1", "turn_id": turn["turn_id"], "note": "urgent"})
    assert first[0] == 200 and first[2]["queued"] is True and first[2]["department"] == entry.department
    assert first[2]["already_queued"] is False and first[2]["position"] >= 1
    again = call(port, "POST", "/api/handoff", {"session": "handoff-1"})
    assert again[2] == {**first[2], "already_queued": True}
    assert call(port, "POST", "/api/handoff", {"session": "handoff-1", "turn_id": "nope"})[0] == 404
    fresh = call(port, "POST", "/api/handoff", {"session": "handoff-2"})  # before any turn: no department yet
    assert fresh[:2] == (200, "application/json") and fresh[2]["department"] is None
    metrics = call(port, "GET", "/metrics")[2]
    assert metric(metrics, f'moat_support_handoffs_total{{department="{entry.department}",trigger="user"}}') == 1
    queue = service["api"].queue()
    assert [item["session"] for item in queue[entry.department]].count("handoff-1") == 1


def test_markup_in_an_answer_is_returned_verbatim(service):
    status, _, turn = chat(service, "markup-1", MARKUP_QUESTION)
    assert status == 200 and turn["action"] == "answer" and turn["answer"]["entry_id"] == "markup"
    assert turn["answer"]["answer"] == MARKUP_ANSWER


def test_event_log_has_one_line_per_turn_feedback_and_handoff(service, assistant):
    port = service["port"]
    turns = [chat(service, "log-1", assistant.entries[i].question)[2] for i in (0, 3, 5)]
    call(port, "POST", "/api/feedback", {"session": "log-1", "turn_id": turns[1]["turn_id"], "helpful": False})
    call(port, "POST", "/api/handoff", {"session": "log-1"})
    lines = [json.loads(line) for line in service["log_path"].read_text().splitlines()]
    mine = [line for line in lines if line["session"] == "log-1"]
    assert [line["event"] for line in mine] == ["turn", "turn", "turn", "feedback", "handoff"]
    for line, turn, index in zip(mine, turns, (0, 3, 5)):
        assert {k: line[k] for k in ("turn_id", "message", "action", "entry_id", "confidence", "department",
                                     "latency_ms")} == {
            "turn_id": turn["turn_id"], "message": assistant.entries[index].question, "action": "answer",
            "entry_id": assistant.entries[index].id, "confidence": turn["confidence"],
            "department": turn["department"], "latency_ms": turn["latency_ms"]}
        assert line["ts"].endswith("+00:00")
    assert mine[3]["helpful"] is False and mine[3]["turn_id"] == turns[1]["turn_id"]
    assert mine[4]["trigger"] == "user" and mine[4]["turn_id"] == turns[2]["turn_id"]


def test_metrics_count_turns_by_action_and_rejections_by_reason(service, assistant):
    port = service["port"]
    before = call(port, "GET", "/metrics")[2]
    chat(service, "metrics-1", assistant.entries[7].question)
    call(port, "POST", "/api/chat", raw=b"{nope")
    status, ctype, after = call(port, "GET", "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    for line, added in (('moat_support_turns_total{action="answer"}', 1),
                        ('moat_support_rejected_requests_total{reason="bad_body"}', 1),
                        ("moat_support_turn_latency_seconds_count", 1)):
        assert metric(after, line) == metric(before, line) + added, line
    assert 'moat_support_turns_total{action="clarify"}' in after and "moat_support_sessions " in after


def test_a_failing_model_server_is_a_503_naming_it_and_a_bug_is_a_500_without_a_trace(assistant, tmp_path):
    from moatkit.app.support.assistant import Assistant
    from moatkit.app.support.models import GrpcModels
    from moatkit.serving.process import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = ServeConfig(port=0, timeout_s=0.5)
    parts = dict(entries=assistant.entries, index=assistant.index, policy=assistant.policy)
    down = SupportApi(Assistant(**parts, models=GrpcModels(address, encoder="support-encoder", timeout_s=0.5)),
                      config, log_path=tmp_path / "down.jsonl")
    status, ctype, text = down.handle("POST", "/api/chat", b'{"session": "s", "message": "hello"}')
    assert (status, ctype) == (503, "application/json")
    assert json.loads(text)["error"].startswith(f"the model server at {address} did not answer (")
    broken = SupportApi(Assistant(**parts, models=None), config, log_path=tmp_path / "broken.jsonl")
    status, _, text = broken.handle("POST", "/api/chat", b'{"session": "s", "message": "hello"}')
    assert (status, json.loads(text)) == (500, {"error": "internal error (the service log has the details)"})
    assert "Traceback" not in text and "rejected_requests_total{reason=\"internal\"} 1.0" in broken.metrics.text()


def test_sessions_are_bounded_lru_and_expire(assistant, tmp_path):
    now = [0.0]
    config = ServeConfig(port=0, max_sessions=2, session_ttl_s=10.0, history_turns=2)
    api = SupportApi(assistant, config, log_path=tmp_path / "sessions.jsonl", clock=lambda: now[0])

    def turns(session):
        return [t["message"] for t in json.loads(api.handle("GET", f"/api/history?session={session}", b"")[2])["turns"]]

    def say(session, message):
        assert api.handle("POST", "/api/chat", json.dumps({"session": session, "message": message}).encode())[0] == 200

    for message in ("one", "two", "three"):
        say("a", message)
    assert turns("a") == ["two", "three"]  # history_turns
    say("b", "hi")
    turns("a")  # a is now the most recently used
    say("c", "hi")  # over max_sessions: b goes
    assert (turns("a"), turns("b"), turns("c")) == (["two", "three"], [], ["hi"])
    now[0] = 9.0
    turns("c")
    now[0] = 15.0  # a idle for 15 s, c for 6 s
    assert (turns("a"), turns("c")) == ([], ["hi"])
    api.close()
