"""Talking to servers a test started: a free port, and Airflow's REST API with retries."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any


class ApiError(urllib.error.HTTPError):
    """An HTTP error whose text carries the request and the server's answer, so a failure in CI says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(url: str, token: str | None = None, payload: dict[str, Any] | None = None, method: str = "GET") -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(payload).encode() if payload is not None else None
    for attempt in range(6):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=120) as r:
                body = r.read().decode()
            break
        except urllib.error.HTTPError as exc:
            # 503 is Airflow's "database busy, try again" (e.g. a backfill while the scheduler holds
            # the SQLite lock); anything else, or a sixth 503, is a real failure.
            if exc.code != 503 or attempt == 5:
                answer = exc.read().decode(errors="replace")[-6000:]
                raise ApiError(
                    exc.url, exc.code, f"{exc.reason} for {method} {url}: {answer}", exc.headers, None
                ) from exc
            time.sleep(2 * (attempt + 1))
        except (TimeoutError, urllib.error.URLError) as exc:
            # A loaded machine can keep the API server busy past the timeout: a read is safe to ask
            # again, a write is not (it may have happened).
            timed_out = isinstance(exc, TimeoutError) or isinstance(exc.reason, TimeoutError)
            if not timed_out or method != "GET" or attempt == 5:
                raise
            time.sleep(2 * (attempt + 1))
    return json.loads(body) if body.startswith(("{", "[")) else body
