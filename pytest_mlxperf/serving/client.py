"""One streamed completion request to an OpenAI-compatible server, timed event by event.

The client is httpx: it streams a response line by line as bytes arrive, has separate connect
and read timeouts, and names its failures (refused, reset, timed out), which become
``ServerError`` messages that say which server and what happened. Timestamps are taken with
``time.perf_counter`` in the thread that reads the stream, as each server-sent event is parsed.

An event *carries a token* when it is a choice without a ``finish_reason`` (llama.cpp servers
send one per token, an empty text for a token that ends inside a UTF-8 character) or one with
text. ``mlx_lm.server`` holds back incomplete UTF-8 and sends no event for such a token, so its
token count comes from the ``usage`` event it sends on request (``stream_options``); where a
server sends usage, usage is the count.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_mlxperf.serving.errors import ServerError

_BODY_SHOWN = 300


@dataclass
class RequestRecord:
    """What one streamed request did, in ``time.perf_counter`` seconds: when it was sent, when
    each token-carrying event arrived, when the stream ended; the token counts (from ``usage``
    when the server sent it, else counted events: ``counted``), and the server's own timing
    fields where it reports them (llama.cpp's server: ``timings``)."""

    t_send: float
    t_events: list[float]
    t_end: float
    completion_tokens: int
    counted: str  # "usage" or "events"
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    server_timings: dict[str, float] = field(default_factory=dict)

    @property
    def ttft(self) -> float:
        return self.t_events[0] - self.t_send

    @property
    def gaps(self) -> list[float]:
        """Seconds between successive token-carrying events (inter-token latency)."""
        return [b - a for a, b in zip(self.t_events, self.t_events[1:], strict=False)]


def _choice_event(event: dict[str, Any]) -> tuple[bool, bool]:
    """(carries a token, finished) for one parsed completion event."""
    choices = event.get("choices")
    if not isinstance(choices, list):
        raise ValueError("no 'choices' list")
    if not choices:
        return False, False  # a usage-only event
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ValueError("a choice is not an object")
    text = choice.get("text")
    if text is None and isinstance(choice.get("delta"), dict):
        text = choice["delta"].get("content")
    finished = choice.get("finish_reason") is not None
    return (not finished) or bool(text), finished


class StreamReader:
    """Parses a server-sent event stream of completion chunks into a ``RequestRecord``."""

    def __init__(self, url: str, t_send: float) -> None:
        self.url = url
        self.t_send = t_send
        self.t_events: list[float] = []
        self.events = 0
        self.finished = False
        self.done = False
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, float] = {}

    def line(self, line: str) -> None:
        """Take one line of the stream (``data: {...}``, a ``:`` comment, an empty line)."""
        now = time.perf_counter()
        if not line.strip() or line.startswith(":"):
            return  # event separator, or a keep-alive comment
        name, _, value = line.partition(":")
        if name != "data":
            return  # "event:", "id:", "retry:" lines carry nothing a completion needs
        data = value.strip()
        if data == "[DONE]":
            self.done = True
            return
        try:
            event = json.loads(data)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            if "error" in event:
                raise ServerError(f"{self.url} sent an error event: {data[:_BODY_SHOWN]}")
            token, finished = _choice_event(event)
        except ValueError as exc:  # json.JSONDecodeError is one
            raise ServerError(
                f"malformed stream event {self.events + 1} from {self.url}: {exc}: "
                f"{data[:_BODY_SHOWN]!r}"
            ) from None
        self.events += 1
        if token:
            self.t_events.append(now)
        self.finished = self.finished or finished
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        if isinstance(event.get("timings"), dict):
            self.timings = {
                k: float(v) for k, v in event["timings"].items() if isinstance(v, (int, float))
            }

    def record(self) -> RequestRecord:
        """The finished request; a stream that ended early or carried no token is refused."""
        t_end = time.perf_counter()
        if not (self.done or self.finished):
            raise ServerError(
                f"the stream from {self.url} ended after {len(self.t_events)} tokens without a "
                "finish_reason or [DONE]: the server closed it early"
                + ("" if self.t_events else " (a prompt beyond its context?)")
            )
        if not self.t_events:
            raise ServerError(f"{self.url} finished the request without sending any token")
        usage = self.usage or {}
        completion = usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details") or {}
        return RequestRecord(
            t_send=self.t_send,
            t_events=self.t_events,
            t_end=t_end,
            completion_tokens=int(completion) if completion is not None else len(self.t_events),
            counted="usage" if completion is not None else "events",
            prompt_tokens=usage.get("prompt_tokens"),
            cached_tokens=details.get("cached_tokens") if isinstance(details, dict) else None,
            server_timings=self.timings,
        )


class Client:
    """An HTTP client for one server: streamed completions, and plain JSON calls.

    ``diagnose`` says why the server is gone when a request breaks (a started server's exit
    code and log), so a crash is reported as a crash rather than as a network error;
    ``log_note`` is the end of a started server's log while it runs, added to the errors of a
    server that stays up but fails a request (a hang, a stream closed early, an HTTP error):
    its own traceback says why."""

    def __init__(
        self,
        url: str,
        timeout: float,
        diagnose: Callable[[], str | None] = lambda: None,
        connections: int = 64,
        log_note: Callable[[], str] = lambda: "",
    ) -> None:
        from pytest_mlxperf.serving import httpx_module

        httpx = httpx_module()
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.diagnose = diagnose
        self.log_note = log_note
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    def close(self) -> None:
        self._client.close()

    def _died(self, where: str, tokens: int | None) -> ServerError | None:
        """The error for a request that failed because the server is gone, ``None`` while it
        runs."""
        died = self.diagnose()
        after = f" after {tokens} tokens" if tokens is not None else ""
        return ServerError(f"{where} failed{after}: the server died: {died}") if died else None

    def _failure(self, what: str, exc: Exception, tokens: int | None = None) -> ServerError:
        httpx = self._httpx
        where = f"{what} {self.url}"
        died = self._died(where, tokens)
        if died is not None:
            return died
        if isinstance(exc, httpx.ConnectError):
            return ServerError(
                f"cannot connect to {self.url} ({exc}): is the server running and listening?"
            )
        if isinstance(exc, httpx.TimeoutException):
            return ServerError(
                f"{where}: no answer within the {self.timeout:g} s timeout "
                f"(the server hangs or is far too slow for this workload){self.log_note()}"
            )
        broke = f" after {tokens} tokens" if tokens is not None else ""
        return ServerError(
            f"{where}: the connection broke{broke} ({type(exc).__name__}: {exc}){self.log_note()}"
        )

    def _check_status(self, response: Any, what: str) -> None:
        if response.status_code >= 400:
            body = response.read().decode("utf-8", errors="replace")
            raise ServerError(
                f"{what} {self.url}{response.url.path} answered HTTP {response.status_code}: "
                f"{body[:_BODY_SHOWN]}{self.log_note() if response.status_code >= 500 else ''}"
            )

    def stream(self, path: str, body: dict[str, Any]) -> RequestRecord:
        """POST ``body`` (a streamed request) and time its events; bounded by the timeout
        between bytes and by the same timeout for the whole request (a server that sends only
        keep-alive comments would otherwise never time out)."""
        httpx = self._httpx
        t_send = time.perf_counter()
        reader = StreamReader(self.url, t_send)
        deadline = t_send + self.timeout
        try:
            with self._client.stream("POST", path, json=body) as response:
                self._check_status(response, "POST")
                for line in response.iter_lines():
                    reader.line(line)
                    if time.perf_counter() > deadline:
                        raise httpx.ReadTimeout("deadline")
        except httpx.HTTPError as exc:
            raise self._failure(f"POST {path} to", exc, len(reader.t_events)) from None
        if not (reader.done or reader.finished):
            # a body delimited by the connection's end (HTTP/1.0: mlx_lm.server) ends cleanly
            # when the server is killed: a crash, not a server that closed the stream early
            died = self._died(f"POST {path} to {self.url}", len(reader.t_events))
            if died is not None:
                raise died
        try:
            return reader.record()
        except ServerError as exc:
            raise ServerError(f"{exc}{self.log_note()}") from None

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` and return the JSON answer."""
        try:
            response = self._client.post(path, json=body)
        except self._httpx.HTTPError as exc:
            raise self._failure(f"POST {path} to", exc) from None
        self._check_status(response, "POST")
        return self._json(response, path)

    def get(self, path: str) -> Any | None:
        """GET ``path`` and return the JSON answer, ``None`` where the server has no such
        endpoint (HTTP 404/405 or a non-JSON answer)."""
        try:
            response = self._client.get(path)
        except self._httpx.HTTPError as exc:
            raise self._failure(f"GET {path} from", exc) from None
        if response.status_code in (404, 405):
            return None
        self._check_status(response, "GET")
        try:
            return response.json()
        except ValueError:
            return None

    def server_header(self, path: str) -> str:
        """The program name in the ``Server`` header of a GET answer (``uvicorn``,
        ``llama.cpp``, ``BaseHTTP``), without its version; empty where there is none."""
        try:
            header = self._client.get(path).headers.get("server", "")
        except self._httpx.HTTPError as exc:
            raise self._failure(f"GET {path} from", exc) from None
        return str(header).split("/")[0].strip()

    def probe(self, path: str, body: dict[str, Any]) -> Any | None:
        """POST to an endpoint that only some servers have: its JSON answer, or ``None`` when
        this server does not have it (any HTTP error)."""
        try:
            response = self._client.post(path, json=body)
        except self._httpx.HTTPError as exc:
            raise self._failure(f"POST {path} to", exc) from None
        if response.status_code >= 400:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def _json(self, response: Any, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ServerError(
                f"{self.url}{path} answered something that is not JSON: "
                f"{response.text[:_BODY_SHOWN]!r}"
            ) from None
