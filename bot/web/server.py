"""The web server's edge: uvicorn under deadlines and caps that a hostile client cannot stretch.

uvicorn brings a keep-alive timeout, a concurrency limit, a listen backlog and h11's cap on the
request head; it has no deadline for reading a request, so EdgeProtocol adds two: the head must be
complete `header_timeout_s` after the connection opens (or after the last answer), and the whole
body `body_timeout_s` after its head, however slowly it trickles. What the edge refuses or cuts is
counted, not logged one by one: one summary line a minute."""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from bot.host.config import Web, WebLimits

log = logging.getLogger(__name__)
SUMMARY_INTERVAL_S = 60.0
# Paths answered whatever the load, so a monitor sees a server that is alive while it refuses work.
ALWAYS_ANSWERED = frozenset({"/healthz"})
# Descriptors kept free for what the server itself opens (database, broker, logs, threads' files):
# past this many connections a new one is closed at once, so accept() never fails for want of one.
SPARE_FDS = 64
COUNTED = ("header timeouts", "body timeouts", "disconnects", "over capacity", "bad requests")


class EdgeCounts:
    """What the edge refused or cut since the last summary; one per process (one server in it)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._watched: asyncio.AbstractEventLoop | None = None

    def count(self, what: str) -> None:
        self.counts[what] += 1

    def summary(self) -> str | None:
        """The summary line and a fresh start, or None when nothing was counted."""
        counts, self.counts = self.counts, Counter()
        if not counts:
            return None
        parts = [f"{counts[what]} {what}" for what in COUNTED]
        parts += [f"{n} {what}" for what, n in sorted(counts.items()) if what not in COUNTED]
        return f"webhook edge: last {SUMMARY_INTERVAL_S:.0f} s: {', '.join(parts)}"

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Log the summary every minute on this loop (once per loop, however often called)."""
        if self._watched is loop:
            return
        self._watched = loop
        loop.call_later(SUMMARY_INTERVAL_S, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        line = self.summary()
        if line is not None:
            log.warning("%s", line)
        if self._watched is loop and not loop.is_closed():
            loop.call_later(SUMMARY_INTERVAL_S, self._tick, loop)


EDGE_COUNTS = EdgeCounts()


class _CountedNotLogged(logging.Filter):
    """uvicorn's and asyncio's per-connection lines, turned into counts (the messages are theirs)."""

    MESSAGES = {
        "Exceeded concurrency limit.": "over capacity",
        "Invalid HTTP request received.": "bad requests",
        "socket.accept() out of system resource": "accept failures",
    }

    def filter(self, record: logging.LogRecord) -> bool:
        what = self.MESSAGES.get(str(record.msg))
        if what is None:
            return True
        EDGE_COUNTS.count(what)
        return False


class EdgeConfig(uvicorn.Config):
    """uvicorn's Config with the limits EdgeProtocol reads."""

    def __init__(self, app: Any, web: Web, **kwargs: Any) -> None:
        limits = web.limits
        self.edge_limits = limits
        self.max_connections = max(1, open_file_limit() - SPARE_FDS)
        options: dict[str, Any] = {
            "host": web.host, "port": web.port, "log_level": "warning", "http": EdgeProtocol, "ws": "none",
            "limit_concurrency": limits.limit_concurrency, "backlog": limits.backlog,
            "timeout_keep_alive": limits.keep_alive_timeout_s, "h11_max_incomplete_event_size": limits.max_header_bytes,
        }  # fmt: skip
        super().__init__(app, **{**options, **kwargs})

    def configure_logging(self) -> None:
        super().configure_logging()
        quiet = _CountedNotLogged()
        for name in ("uvicorn.error", "asyncio"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _CountedNotLogged) for f in logger.filters):
                logger.addFilter(quiet)


class EdgeProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each phase of reading a request."""

    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:  # fmt: skip
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(config, EdgeConfig), "EdgeProtocol needs an EdgeConfig"
        self.limits: WebLimits = config.edge_limits
        self.max_connections = config.max_connections
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = "head"  # head: waiting for a request head; body: reading its body; answer: ours to give
        self._cut = False

    # uvicorn reads limit_concurrency once per request, just after it has set self.scope.
    @property  # type: ignore[override]
    def limit_concurrency(self) -> int | None:
        if self.scope is not None and self.scope["path"] in ALWAYS_ANSWERED:
            return None
        return self._limit_concurrency

    @limit_concurrency.setter
    def limit_concurrency(self, value: int | None) -> None:
        self._limit_concurrency = value

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        EDGE_COUNTS.watch(self.loop)
        if len(self.connections) > self.max_connections:
            EDGE_COUNTS.count("over capacity")
            self._cut = True
            transport.abort()
            return
        self._arm(self.limits.header_timeout_s, "header timeouts")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        # The next request's head has its own deadline; uvicorn's keep-alive timer only waits for its first byte.
        self._phase = "head"
        self._arm(self.limits.header_timeout_s, "header timeouts")
        self._follow_request()  # uvicorn may have read a pipelined request's head already

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._cut and self._client_left_midway():
            EDGE_COUNTS.count("disconnects")
        self._disarm()
        super().connection_lost(exc)

    def _client_left_midway(self) -> bool:
        # Closing between requests is how HTTP/1.1 clients say goodbye; during a body or before our answer it is not.
        if self._phase == "body":
            return True
        return self._phase == "answer" and self.cycle is not None and not self.cycle.response_complete

    def _follow_request(self) -> None:
        state = self.conn.their_state
        if state is h11.IDLE:
            return  # the head is not complete: its deadline stands
        if state is h11.SEND_BODY:
            if self._phase == "head":
                self._phase = "body"
                self._arm(self.limits.body_timeout_s, "body timeouts")
        elif self._phase != "answer":
            self._phase = "answer"
            self._disarm()

    def _arm(self, delay: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay, self._expire, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        EDGE_COUNTS.count(what)
        self._cut = True
        # abort, not close: a client that does not read must not keep the socket through a lingering write.
        self.transport.abort()


def open_file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_file_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard one (each connection is a descriptor); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open file limit from %d to %d: %s", soft, wanted, exc)
    return open_file_limit()


def run_server(app: Any, web: Web) -> None:
    """Serve `app` the way `labgate web` does, until a signal stops it."""
    raise_open_file_limit()
    uvicorn.Server(EdgeConfig(app, web)).run()
