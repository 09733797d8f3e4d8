"""`moat support serve`: the chat page and its JSON API over the assistant, on serving/rest.py's HTTP stack.

Sessions are bounded: each keeps its last `history_turns` turns and a token bucket (`turns_per_second`, `burst`);
the least recently used session goes once `max_sessions` are held, and any session after `session_ttl_s` idle.
Every turn, feedback and hand-off is one JSON line in the event log; counters and a latency histogram are on
/metrics. launch.py starts it with the models it calls over gRPC.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict, deque
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc

from moatkit.app.support.config import ServeConfig

logger = logging.getLogger("moat.support")

STATIC_DIR = Path(__file__).parent / "static"
LOG_FILE = "events.jsonl"
PREFIX = "moat_support_"
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
ACTIONS = ("answer", "clarify", "handoff")
REJECT_REASONS = ("bad_body", "bad_session", "bad_message", "bad_field", "rate_limited", "model_server",
                  "not_found", "unknown_turn", "duplicate_feedback", "method", "internal")
PAGES = {"/": ("chat.html", "text/html; charset=utf-8"), "/index.html": ("chat.html", "text/html; charset=utf-8"),
         "/static/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
         "/static/chat.css": ("chat.css", "text/css; charset=utf-8")}


class _Reject(Exception):
    """A request answered with an error: status, a reason (the metric label) and a one-line message."""

    def __init__(self, status: int, reason: str, message: str, **extra):
        super().__init__(message)
        self.status, self.reason, self.message, self.extra = status, reason, message, extra


def _json(status: int, value) -> tuple[int, str, str]:
    return status, "application/json", json.dumps(value, ensure_ascii=False)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# === Sessions ===

@dataclasses.dataclass
class _Session:
    tokens: float
    refilled: float
    seen: float
    history: deque
    handoff: dict | None = None  # this session's place in the hand-off queue, once it has one

    def take(self, now: float, rate: float, burst: int) -> float:
        """Takes a token; returns 0, or the seconds until one is there (nothing taken)."""
        self.tokens = min(float(burst), self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


class _Sessions:
    """LRU over max_sessions with an idle expiry; the caller holds the lock. The front is the least recently seen
    session, so expiry only ever looks at the front."""

    def __init__(self, config: ServeConfig, clock, on_evict):
        self.config, self.clock, self.on_evict = config, clock, on_evict
        self.items: OrderedDict[str, _Session] = OrderedDict()

    def get(self, session_id: str, *, create: bool) -> _Session | None:
        now = self.clock()
        while self.items and next(iter(self.items.values())).seen + self.config.session_ttl_s < now:
            self.on_evict(*self.items.popitem(last=False))
        session = self.items.get(session_id)
        if session is None and create:
            while len(self.items) >= self.config.max_sessions:
                self.on_evict(*self.items.popitem(last=False))
            session = _Session(tokens=float(self.config.burst), refilled=now, seen=now,
                               history=deque(maxlen=self.config.history_turns))
            self.items[session_id] = session
        if session is not None:
            session.seen = now
            self.items.move_to_end(session_id)
        return session


# === Metrics and the event log ===

class _Metrics:
    def __init__(self, sessions: _Sessions):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.turns = Counter(PREFIX + "turns", "chat turns, by the assistant's action", ["action"],
                             registry=self.registry)
        self.feedback = Counter(PREFIX + "feedback", "feedback on turns, by whether the answer helped", ["helpful"],
                                registry=self.registry)
        self.handoffs = Counter(PREFIX + "handoffs", "sessions queued for a person, by who asked (user: the button; "
                                "assistant: a hand-off turn)", ["trigger", "department"], registry=self.registry)
        self.rejected = Counter(PREFIX + "rejected_requests", "requests answered with an error, by reason",
                                ["reason"], registry=self.registry)
        self.latency = Histogram(PREFIX + "turn_latency_seconds", "time to answer a chat turn (models + index + "
                                 "policy)", registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        Gauge(PREFIX + "sessions", "sessions held", registry=self.registry).set_function(lambda: len(sessions.items))
        # every series present at 0, so answer and hand-off rates are defined from the first turn
        for counter, values in ((self.turns, ACTIONS), (self.feedback, ("true", "false")),
                                (self.rejected, REJECT_REASONS)):
            for value in values:
                counter.labels(value)

    def text(self) -> str:
        from prometheus_client import generate_latest
        return generate_latest(self.registry).decode("utf-8")


# === Request fields ===

def _body_json(body: bytes) -> dict:
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise _Reject(400, "bad_body", f"the request body is not UTF-8 (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise _Reject(400, "bad_body", f"the request body is not JSON: {err.msg} at character {err.pos}") from None
    if not isinstance(value, dict):
        raise _Reject(400, "bad_body", "the request body must be a JSON object")
    return value


def _session_id(value) -> str:
    if not isinstance(value, str) or not SESSION_ID.fullmatch(value):
        raise _Reject(400, "bad_session", "'session' must be 1 to 64 characters of A-Z a-z 0-9 _ -")
    return value


def _text(value, name: str, limit: int, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _Reject(400, "bad_message", f"'{name}' must be a string")
    text = value.strip()
    if required and not text:
        raise _Reject(400, "bad_message", f"'{name}' is empty")
    if len(text) > limit:
        raise _Reject(400, "bad_message", f"'{name}' has {len(text)} characters; the limit is {limit}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON can spell lone surrogates ("\ud800"), which no model input can hold
        raise _Reject(400, "bad_message", f"'{name}' is not valid Unicode text") from None
    return text


# === The API ===

class SupportApi:
    """`handle(method, path, body) -> (status, content_type, text)`, for serving.rest.make_http_server."""

    def __init__(self, assistant, config: ServeConfig, *, log_path: str | Path, clock=time.monotonic):
        self.assistant, self.config, self.clock = assistant, config, clock
        self.model_server = getattr(assistant.models, "address", "in-process")
        self._lock = threading.Lock()
        self._sessions = _Sessions(config, clock, self._evicted)
        self._queues: dict[str | None, OrderedDict] = {}  # department → session id → queue item
        self.metrics = _Metrics(self._sessions)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("a", encoding="utf-8")
        self._log_lock = threading.Lock()
        pages = {route: ("GET", lambda _, page=(200, ctype, (STATIC_DIR / name).read_text(encoding="utf-8")): page)
                 for route, (name, ctype) in PAGES.items()}
        self._routes = {**pages, "/api/chat": ("POST", self._chat), "/api/feedback": ("POST", self._feedback),
                        "/api/handoff": ("POST", self._handoff), "/api/history": ("GET", self._history),
                        "/metrics": ("GET", lambda _: (200, "text/plain; version=0.0.4; charset=utf-8",
                                                        self.metrics.text())),
                        "/healthz": ("GET", lambda _: _json(200, {"status": "ok"}))}

    def close(self) -> None:
        with self._log_lock:
            self._log.close()

    def _event(self, event: str, session_id: str, turn: dict | None, **extra) -> None:
        """One JSON line, written and flushed whole under a lock: the turn's fields (null without one) + extra."""
        turn = turn or {}
        fields = {"ts": _now_iso(), "event": event, "session": session_id, "turn_id": turn.get("turn_id"),
                  "message": turn.get("message"), "action": turn.get("action"),
                  "entry_id": (turn.get("answer") or {}).get("entry_id"), "confidence": turn.get("confidence"),
                  "department": turn.get("department"), "latency_ms": turn.get("latency_ms"), **extra}
        with self._log_lock:
            self._log.write(json.dumps(fields, ensure_ascii=False) + "\n")
            self._log.flush()

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, str]:
        try:
            return self._route(method, path, body)
        except _Reject as err:
            self.metrics.rejected.labels(err.reason).inc()
            return _json(err.status, {"error": err.message, **err.extra})
        except Exception:  # a bug: logged with its traceback here, never sent to the client
            logger.exception("support: %s %s failed", method, path)
            self.metrics.rejected.labels("internal").inc()
            return _json(500, {"error": "internal error (the service log has the details)"})

    def _route(self, method: str, path: str, body: bytes):
        parts = urlsplit(path)
        method = "GET" if method == "HEAD" else method
        if parts.path not in self._routes:
            raise _Reject(404, "not_found", f"no such path: {parts.path}")
        wanted, handler = self._routes[parts.path]
        if method != wanted:
            raise _Reject(405, "method", f"{parts.path} takes {wanted}, not {method}")
        return handler(parts.query if wanted == "GET" else body)

    def _chat(self, body: bytes):
        request = _body_json(body)
        session_id = _session_id(request.get("session"))
        message = _text(request.get("message"), "message", self.config.max_message_chars, required=True)
        with self._lock:
            wait = self._sessions.get(session_id, create=True).take(self.clock(), self.config.turns_per_second,
                                                                     self.config.burst)
        if wait:
            raise _Reject(429, "rate_limited", f"too many messages: wait {wait:.1f} s and send again",
                          retry_after_s=round(wait, 3))
        started = time.perf_counter()
        reply = self._reply(message)
        latency_ms = round((time.perf_counter() - started) * 1e3, 2)
        turn = {"turn_id": uuid.uuid4().hex[:16], "session": session_id, "action": reply["action"],
                "answer": reply["answer"], "candidates": reply["candidates"], "confidence": reply["confidence"],
                "department": reply["department"], "latency_ms": latency_ms, "timings_ms": reply["timings_ms"]}
        with self._lock:
            session = self._sessions.get(session_id, create=True)  # it may have been evicted meanwhile
            record = {**turn, "message": message, "at": _now_iso(), "feedback": None}
            session.history.append(record)
            self._event("turn", session_id, record, candidates=[c["entry_id"] for c in turn["candidates"]])
            turn["handoff"] = self._enqueue(session_id, session, record, "assistant", None) \
                if turn["action"] == "handoff" else None
        self.metrics.turns.labels(turn["action"]).inc()
        self.metrics.latency.observe(latency_ms / 1e3)
        return _json(200, turn)

    def _reply(self, message: str) -> dict:
        try:
            return self.assistant.reply(message)
        except grpc.RpcError as err:
            code = err.code().name if hasattr(err, "code") else type(err).__name__
            logger.warning("support: model server %s failed: %s", self.model_server, err)
            raise _Reject(503, "model_server", f"the model server at {self.model_server} did not answer ({code}); "
                                               "try again in a moment") from None

    def _history(self, query: str):
        session_id = _session_id(parse_qs(query).get("session", [None])[0])
        with self._lock:
            session = self._sessions.get(session_id, create=False)
            turns = [dict(t) for t in session.history] if session else []
        return _json(200, {"session": session_id, "turns": turns})

    # --- feedback and hand-off ---

    def _turn(self, session_id: str, turn_id) -> tuple[_Session, dict]:
        """Caller holds the lock."""
        session = self._sessions.get(session_id, create=False)
        turn = next((t for t in session.history if t["turn_id"] == turn_id), None) if session else None
        if turn is None:
            raise _Reject(404, "unknown_turn", f"session {session_id!r} has no turn {turn_id!r} (a session keeps "
                                               f"its last {self.config.history_turns} turns)")
        return session, turn

    def _feedback(self, body: bytes):
        request = _body_json(body)
        session_id = _session_id(request.get("session"))
        helpful, entry_id = request.get("helpful"), request.get("entry_id")
        if not isinstance(helpful, bool):
            raise _Reject(400, "bad_field", "'helpful' must be true or false")
        with self._lock:
            _, turn = self._turn(session_id, request.get("turn_id"))
            shown = [v["entry_id"] for v in [turn["answer"], *turn["candidates"]] if v]
            if entry_id is not None and entry_id not in shown:
                raise _Reject(400, "bad_field", f"'entry_id' must be one this turn showed: {shown}")
            if turn["feedback"] is not None:
                raise _Reject(409, "duplicate_feedback", f"turn {turn['turn_id']!r} already has feedback")
            entry_id = entry_id if entry_id is not None else (shown[0] if shown else None)
            turn["feedback"] = {"helpful": helpful, "entry_id": entry_id}
        self.metrics.feedback.labels(str(helpful).lower()).inc()
        self._event("feedback", session_id, turn, entry_id=entry_id, helpful=helpful)
        return _json(200, {"recorded": True, "turn_id": turn["turn_id"], "helpful": helpful, "entry_id": entry_id})

    def _handoff(self, body: bytes):
        request = _body_json(body)
        session_id = _session_id(request.get("session"))
        note = _text(request.get("note"), "note", self.config.max_message_chars, required=False)
        with self._lock:
            if request.get("turn_id") is not None:
                session, turn = self._turn(session_id, request["turn_id"])
            else:
                session = self._sessions.get(session_id, create=True)
                turn = session.history[-1] if session.history else None
            queued = self._enqueue(session_id, session, turn, "user", note)
        return _json(200, queued)

    def _enqueue(self, session_id: str, session: _Session, turn: dict | None, trigger: str, note: str | None):
        """Caller holds the lock. A session has at most one place in the queue; asking again returns it."""
        if session.handoff is None:
            department = turn["department"] if turn else None
            queue = self._queues.setdefault(department, OrderedDict())
            queue[session_id] = {"turn_id": turn and turn["turn_id"], "at": _now_iso()}
            session.handoff = {"department": department}
            self.metrics.handoffs.labels(trigger, str(department)).inc()
            self._event("handoff", session_id, turn, department=department, trigger=trigger, note=note,
                        position=len(queue))
            already = False
        else:
            department, already = session.handoff["department"], True
        position = list(self._queues[department]).index(session_id) + 1
        return {"queued": True, "department": department, "position": position, "already_queued": already}

    def _evicted(self, session_id: str, session: _Session) -> None:
        """A session that is gone cannot be reached by a person either: its queue place goes with it."""
        if session.handoff is not None:
            self._queues[session.handoff["department"]].pop(session_id, None)

    def queue(self) -> dict:
        """{department: [{session, turn_id, at}]}, in queue order."""
        with self._lock:
            return {str(d): [{"session": s, **item} for s, item in q.items()] for d, q in self._queues.items()}
