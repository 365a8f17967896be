"""A small client for OpenAI-compatible chat endpoints (OpenAI, vLLM ``serve``, llama.cpp, TGI, ...), stdlib only.

Used as the ``mrlite eval`` judge: ``--judge openai:<base_url>#<model>``. The API key is read from the
environment variable the user names (default ``OPENAI_API_KEY``) and is never logged, cached or written.
Transient failures (connection errors, timeouts, HTTP 429 and 5xx, malformed JSON) are retried with
exponential backoff; a request that still fails comes back as an error, which the caller marks failed and
counts, never scores. Exercised by: ``mrlite eval runs/smoke --judge openai:http://127.0.0.1:8000/v1#judge``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mrlite.errors import MrliteError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
UNREACHABLE_AFTER = 8
"""Consecutive connection failures after which the rest of a batch is marked failed without being sent."""


class EndpointError(MrliteError, ValueError):
    """A judge endpoint setting the user must fix (bad spec, missing key). One line."""


@dataclass
class EndpointResult:
    """One chat completion: ``text``, or ``error`` (then ``text`` is None), and the attempts it took."""

    text: str | None
    error: str | None = None
    attempts: int = 1


def parse_judge_spec(spec: str) -> tuple[str, str]:
    """``openai:<base_url>#<model>`` → ``(base_url, model)``.

    Raises:
        EndpointError: the spec is not of that form.
    """
    body = spec.removeprefix("openai:")
    url, sep, model = body.partition("#")
    if not spec.startswith("openai:") or not sep or not model or not url.startswith(("http://", "https://")):
        raise EndpointError(
            f"--judge {spec!r}: expected openai:<base_url>#<model>, e.g. openai:https://api.openai.com/v1#gpt-4o"
        )
    return url.rstrip("/"), model


class OpenAIChat:
    """Chat completions from ``<base_url>/chat/completions``.

    Args:
        base_url: Up to and including the version, e.g. ``https://api.openai.com/v1``.
        model: The model name the endpoint expects.
        api_key_env: Environment variable holding the key; ``""`` or ``None`` for a server without keys.
        timeout: Seconds per HTTP request.
        retries: Retries after the first attempt.
        backoff: First wait in seconds; doubles per retry.
        concurrency: Requests in flight at once.
        sleep: Injected for tests.

    Raises:
        EndpointError: the named environment variable is not set.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 120.0, retries: int = 4, backoff: float = 1.0, concurrency: int = 4,
                 sleep: Callable[[float], None] | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.identity = f"openai:{base_url.rstrip('/')}#{model}"
        self._key = None
        if api_key_env:
            self._key = os.environ.get(api_key_env)
            if not self._key:
                raise EndpointError(
                    f"the judge endpoint needs an API key in the environment variable {api_key_env}, which is not "
                    "set; export it, or pass --api-key-env '' for a server that needs no key"
                )
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.concurrency, self.sleep = max(1, concurrency), sleep or time.sleep
        self._down = 0  # consecutive connection failures

    def _post(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def complete(self, messages: list[dict], *, temperature: float = 0.0, top_p: float = 1.0,
                 max_tokens: int = 1024) -> EndpointResult:
        """One completion with retries; never raises for endpoint trouble (the error is in the result)."""
        payload = {"model": self.model, "messages": messages, "temperature": temperature, "top_p": top_p,
                   "max_tokens": max_tokens}
        error = "not sent"
        for attempt in range(1, self.retries + 2):
            if self._down >= UNREACHABLE_AFTER:
                return EndpointResult(None, f"skipped: endpoint unreachable ({error})", attempt - 1)
            retry = True
            try:
                data = self._post(payload)
                self._down = 0
                text = data["choices"][0]["message"]["content"]
                if not isinstance(text, str):
                    raise TypeError("content is not text")
                return EndpointResult(text, None, attempt)
            except urllib.error.HTTPError as e:
                self._down = 0
                error = f"HTTP {e.code}: {_body(e)}"
                retry = e.code in RETRY_STATUS
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                self._down += 1
                error = f"unreachable: {getattr(e, 'reason', e)}"
            except (ValueError, KeyError, IndexError, TypeError) as e:  # JSON or shape
                error = f"malformed answer: {type(e).__name__}: {str(e)[:120]}"
            if not retry or attempt > self.retries:
                return EndpointResult(None, error, attempt)
            wait = self.backoff * 2 ** (attempt - 1)
            log.debug("judge endpoint attempt %d failed (%s); retrying in %.1fs", attempt, error, wait)
            self.sleep(wait)
        return EndpointResult(None, error, self.retries + 1)  # pragma: no cover - loop always returns

    def complete_many(self, chats: Sequence[list[dict]], **kw) -> list[EndpointResult]:
        """``complete`` for each chat, ``concurrency`` at a time, results in order."""
        if self.concurrency == 1 or len(chats) <= 1:
            return [self.complete(c, **kw) for c in chats]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda c: self.complete(c, **kw), chats))


def _body(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", "replace")
    except Exception:  # the body is only for the message
        text = ""
    return " ".join(text.split())[:200] or str(e.reason)
