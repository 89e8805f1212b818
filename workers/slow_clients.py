"""Deadlines for slow HTTP clients, which uvicorn lacks: a request's headers must all arrive
within CLEARMARK_API_HEADER_TIMEOUT_S (from the connection's start, or from the end of the
previous response on a kept-alive connection) and its body within
CLEARMARK_API_BODY_TIMEOUT_S after them. A client that is slower is answered `408` (unless a
response has started) and cut off, so a few hundred connections that trickle bytes cannot
hold the server."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from clearmark.settings import get_settings
from clearmark.workers.api_errors import error_response


def _timeout_response(what: str) -> bytes:
    """The API's JSON 408, as raw HTTP/1.1: no request may have been parsed yet."""
    response = error_response(
        408, "request_timeout", f"the request's {what} came too slowly", {"Connection": "close"}
    )
    head = b"".join(name + b": " + value + b"\r\n" for name, value in response.raw_headers)
    return b"HTTP/1.1 408 Request Timeout\r\n" + head + b"\r\n" + response.body


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a header and a body deadline per request."""

    deadline: asyncio.TimerHandle | None = None
    timed: RequestResponseCycle | None = None  # the request whose body the deadline is for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(get_settings().api_header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is None or cycle is self.timed:
            if cycle is not None and not cycle.more_body:
                self._disarm()  # the body is all in
            return
        self.timed = cycle  # a new request: its headers are in
        self._disarm()
        if cycle.more_body:
            self._arm(get_settings().api_body_timeout_s, "body")

    def on_response_complete(self) -> None:
        self._arm(get_settings().api_header_timeout_s, "headers")  # first: a pipelined
        super().on_response_complete()  # request's headers may already be here

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expired(self, what: str) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        answering = what == "body" and self.cycle is not None and self.cycle.response_started
        if not answering:
            self.transport.write(_timeout_response(what))
        self.logger.info("%s: request %s too slow: connection closed", self.client, what)
        self.transport.close()
