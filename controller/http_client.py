"""One HTTP client per process for the calls every check makes.

``httpx.get`` builds a client, and with it a TLS context that loads the system's CA
bundle, for every call: about 60 ms of CPU each, even for plain-HTTP URLs. A check
that asks both slots their version paid that twice, and at hundreds of rollouts a
minute it was most of a worker's time. The shared client is built once per process
(again after a fork: a Celery pool child must not share its parent's connections)
and is safe to use from several threads.

It keeps nothing between calls: no cookies (a slot's answer must not shape the next
check's request) and no idle connections (a connection the slot closed between two
checks would fail the next one; a new loopback or LAN connection costs little next
to the TLS context the shared client saves). Its connections are guarded
(``controller.guarded_network``): the slots' URLs come from plans.
"""

from __future__ import annotations

import os
import threading
import time
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from controller.guarded_network import guarded_transport

_lock = threading.Lock()
_client: httpx.Client | None = None
_pid: int | None = None


def shared_client() -> httpx.Client:
    """This process's client: no proxies from the environment, no redirects followed
    (a redirect to another host is not the slot we asked); callers pass a timeout."""
    global _client, _pid
    with _lock:
        if _client is None or _pid != os.getpid():
            _client = httpx.Client(
                trust_env=False,
                follow_redirects=False,
                cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
                transport=guarded_transport(limits=httpx.Limits(max_keepalive_connections=0)),
            )
            _pid = os.getpid()
        return _client


MAX_ANSWER_BYTES = 1024 * 1024  # a check's or a version endpoint's answer, at most


class AnswerTooLarge(httpx.HTTPError):
    """An answer longer than ``MAX_ANSWER_BYTES``: no check needs that much."""


def request_within(client: httpx.Client, method: str, url: str, seconds: float) -> httpx.Response:
    """The whole answer within ``seconds``, or ``httpx.ReadTimeout``.

    httpx's timeout bounds each network operation, not the request: a server that
    sends a byte a second never times out, and would hold a check (and the task it
    runs in) until the task's time limit. Here the body is read against one deadline,
    and at most ``MAX_ANSWER_BYTES`` of it. (The status line and headers are still
    bounded only per read.)
    """
    deadline = time.monotonic() + seconds
    with client.stream(method, url, timeout=seconds) as response:
        body = bytearray()
        for chunk in response.iter_bytes():  # decoded (gzip and the like)
            body += chunk
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(
                    f"answer not complete within {seconds:g}s", request=response.request
                )
            if len(body) > MAX_ANSWER_BYTES:
                raise AnswerTooLarge(f"answer longer than {MAX_ANSWER_BYTES} bytes")
        headers = {
            name: value
            for name, value in response.headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        }
        return httpx.Response(
            response.status_code, headers=headers, content=bytes(body), request=response.request
        )
