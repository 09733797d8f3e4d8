"""`moat opinion serve`: the dashboard page and its JSON API over an OpinionMonitor, on serving/rest.py's HTTP stack.

GET only: the page and its two static files, /api/summary, /api/timeline, /api/alerts, /api/items, /metrics
(Prometheus text of the registry given) and /healthz. Every error is one line of JSON, `{"error": "..."}`, naming
what was wrong (a bad query value names the parameter and its allowed range). The API returns the texts as they
came; the page puts them in as text, never as markup. `make_dashboard_server` is make_http_server plus the headers
of every answer (Content-Security-Policy, nosniff, no-store for /api); the page also carries its CSP as a meta tag.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from moatkit.app.opinion.monitor import MARKET
from moatkit.app.opinion.scorer import SENTIMENTS

logger = logging.getLogger("moat.opinion")

STATIC_DIR = Path(__file__).parent / "static"
HTML, JS, CSS = "text/html; charset=utf-8", "text/javascript; charset=utf-8", "text/css; charset=utf-8"
PAGES = {"/": ("dashboard.html", HTML), "/index.html": ("dashboard.html", HTML),
         "/static/dashboard.js": ("dashboard.js", JS), "/static/dashboard.css": ("dashboard.css", CSS)}
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LIMIT = 1000
DEFAULT_LIMITS = {"/api/alerts": 100, "/api/items": 50}
# the query parameters each route takes; any other is an error (a typo would otherwise be ignored silently)
PARAMETERS = {"/api/timeline": ("entity",), "/api/alerts": ("entity", "limit"), "/api/items": ("entity", "limit")}
SECURITY_HEADERS = (("Content-Security-Policy", "default-src 'self'"), ("X-Content-Type-Options", "nosniff"),
                    ("Referrer-Policy", "no-referrer"))
# the counts the monitor only has once something happened: zero until then, so the page needs no special case
COUNT_KEYS = ("items", "mentions", "unmatched", "alerts", *(f"sentiment_{s}" for s in SENTIMENTS))


class _Reject(Exception):
    """A request answered with an error: its status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _json(status: int, value) -> tuple[int, str, str]:
    return status, "application/json", json.dumps(value, ensure_ascii=False)


def headers_for(path: str) -> list[tuple[str, str]]:
    """The headers every answer gets besides Content-Type and Content-Length."""
    headers = list(SECURITY_HEADERS)
    if urlsplit(path).path.startswith("/api/"):
        headers.append(("Cache-Control", "no-store"))
    return headers


class OpinionApi:
    """`handle(method, path, body) -> (status, content_type, text)`, for serving.rest.make_http_server.

    `stream_status()` says how the stream stands (StreamReport.as_dict() plus "running"); `registry` is the
    prometheus_client CollectorRegistry /metrics shows (None: an empty page)."""

    def __init__(self, monitor, *, stream_status=None, registry=None):
        self.monitor, self.stream_status, self.registry = monitor, stream_status, registry
        pages = {route: (200, ctype, (STATIC_DIR / name).read_text(encoding="utf-8"))
                 for route, (name, ctype) in PAGES.items()}
        self._routes = {**{route: (lambda _, page=page: page) for route, page in pages.items()},
                        "/api/summary": self._summary, "/api/timeline": self._timeline,
                        "/api/alerts": self._alerts, "/api/items": self._items,
                        "/metrics": self._metrics, "/healthz": lambda _: _json(200, {"status": "ok"})}

    def headers(self, path: str) -> list[tuple[str, str]]:
        return headers_for(path)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, str]:
        try:
            return self._route(method, path)
        except _Reject as err:
            return _json(err.status, {"error": err.message})
        except Exception:  # a bug: logged with its traceback here, never sent to the client
            logger.exception("opinion dashboard: %s %s failed", method, path)
            return _json(500, {"error": "internal error (the service log has the details)"})

    def _route(self, method: str, path: str):
        parts = urlsplit(path)
        if parts.path not in self._routes:
            raise _Reject(404, f"no such path: {parts.path}")
        if method not in ("GET", "HEAD"):
            raise _Reject(405, f"{parts.path} takes GET, not {method}")
        return self._routes[parts.path](self._query(parts.path, parts.query))

    # --- query parameters ---

    def _query(self, route: str, query: str) -> dict[str, str]:
        """An /api route's parameters, each at most once; an unknown one is an error naming what the route takes.
        The page, its files, /metrics and /healthz ignore their query string (a cache-buster, say)."""
        if not route.startswith("/api/"):
            return {}
        try:
            values = parse_qs(query, keep_blank_values=True, strict_parsing=False, errors="strict")
        except UnicodeDecodeError:
            raise _Reject(400, "the query string is not UTF-8") from None
        allowed = PARAMETERS.get(route, ())
        for name, given in values.items():
            if name not in allowed:
                takes = f"takes only {', '.join(repr(a) for a in allowed)}" if allowed else "takes no parameters"
                raise _Reject(400, f"unknown parameter {name!r}: {route} {takes}")
            if len(given) > 1:
                raise _Reject(400, f"{name!r} is given {len(given)} times; give it once")
        return {name: given[0] for name, given in values.items()}

    def _limit(self, route: str, query: dict) -> int:
        text = query.get("limit")
        if text is None:
            return DEFAULT_LIMITS[route]
        limit = int(text) if re.fullmatch(r"[0-9]{1,9}", text) else None
        if limit is None or not 1 <= limit <= MAX_LIMIT:
            raise _Reject(400, f"'limit' must be an integer from 1 to {MAX_LIMIT}, not {text!r}")
        return limit

    def _entity(self, query: dict, *, market: bool = False) -> str | None:
        name = query.get("entity")
        if name is None:
            return None
        watched = self.monitor.watchlist.names + ([MARKET] if market else [])
        if not name.strip():
            raise _Reject(400, f"'entity' is empty: give one of {', '.join(watched)} (or leave it out for all)")
        if name not in watched:
            raise _Reject(404, f"{name!r} is not a watched entity (watched: {', '.join(watched)})")
        return name

    # --- the API ---

    def _summary(self, _query: dict):
        summary = self.monitor.summary()
        counts = {**{key: 0 for key in COUNT_KEYS}, **summary["counts"]}
        stream = self.stream_status() if self.stream_status is not None else None
        return _json(200, {"counts": counts, "entities": summary["entities"], "stream": stream})

    def _timeline(self, query: dict):
        entity = self._entity(query, market=True)
        timeline = self.monitor.timeline()
        if entity is not None:
            timeline["series"] = {name: series for name, series in timeline["series"].items()
                                  if name in (entity, MARKET)}
        return _json(200, timeline)

    def _alerts(self, query: dict):
        entity, limit = self._entity(query), self._limit("/api/alerts", query)
        with self.monitor.lock:  # the stream thread appends while this reads
            alerts = list(self.monitor.alerts)
        newest_first = [a for a in reversed(alerts) if entity is None or a["entity"] == entity]
        return _json(200, {"alerts": newest_first[:limit]})

    def _items(self, query: dict):
        entity, limit = self._entity(query), self._limit("/api/items", query)
        return _json(200, {"items": self.monitor.latest_negative(entity=entity, limit=limit)})

    def _metrics(self, _query: dict):
        if self.registry is None:
            return 200, METRICS_TYPE, ""
        from prometheus_client import generate_latest
        return 200, METRICS_TYPE, generate_latest(self.registry).decode("utf-8")


def make_dashboard_server(api: OpinionApi, *, port: int, host: str | None = None):
    """serving.rest.make_http_server around `api`, its handler sending `api.headers(path)` with every answer
    (rest.py's handler sends only Content-Type and Content-Length)."""
    from moatkit.serving.rest import make_http_server

    server = make_http_server(api, port=port, host=host, max_request_bytes=64 * 1024)
    base = server.RequestHandlerClass

    def end_headers(handler):
        for name, value in api.headers(getattr(handler, "path", "") or ""):
            handler.send_header(name, value)
        base.end_headers(handler)

    server.RequestHandlerClass = type("OpinionDashboardHandler", (base,), {"end_headers": end_headers})
    return server
