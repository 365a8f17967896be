"""The OpenAI-compatible client against a stub server on 127.0.0.1: success, retry then success, malformed
answers, non-retryable errors, an unreachable endpoint, and the API key's environment variable."""

from __future__ import annotations

import socket

import pytest
from eval_helpers import StubServer, chat_reply

from mrlite.eval.endpoint import UNREACHABLE_AFTER, EndpointError, OpenAIChat, parse_judge_spec

MSG = [{"role": "user", "content": "Which is better?"}]


def _client(url: str, waits: list | None = None, **kw) -> OpenAIChat:
    return OpenAIChat(url, "judge-model", api_key_env="MRLITE_TEST_KEY", backoff=0.5,
                      sleep=(waits.append if waits is not None else (lambda s: None)), **kw)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("MRLITE_TEST_KEY", "sk-test-123")


def test_success_sends_model_messages_and_key():
    seen = []

    def reply(body):
        seen.append(body)
        return chat_reply("[[A]]")

    with StubServer(reply) as s:
        r = _client(s.url).complete(MSG, temperature=0.0, max_tokens=64)
    assert (r.text, r.error, r.attempts) == ("[[A]]", None, 1)
    assert seen[0]["model"] == "judge-model" and seen[0]["messages"] == MSG and seen[0]["max_tokens"] == 64
    assert s.auth == ["Bearer sk-test-123"]


def test_retry_with_backoff_then_success():
    replies = iter([(503, "busy"), (429, {"error": "slow down"}), chat_reply("[[B]]")])
    waits: list[float] = []
    with StubServer(lambda body: next(replies)) as s:
        r = _client(s.url, waits).complete(MSG)
    assert (r.text, r.attempts, s.hits) == ("[[B]]", 3, 3)
    assert waits == [0.5, 1.0]  # exponential backoff


@pytest.mark.parametrize("payload", [(200, "not json"), (200, {"choices": []}), (200, {"choices": [{"message": {}}]}),
                                     (200, {"choices": [{"message": {"content": None}}]})])
def test_malformed_answers_fail_after_retries(payload):
    with StubServer(lambda body: payload) as s:
        r = _client(s.url, retries=2).complete(MSG)
    assert r.text is None and r.error.startswith("malformed answer") and r.attempts == 3 and s.hits == 3


def test_client_errors_are_not_retried():
    with StubServer(lambda body: (401, {"error": {"message": "bad key"}})) as s:
        r = _client(s.url).complete(MSG)
    assert r.text is None and r.error.startswith("HTTP 401") and "bad key" in r.error and s.hits == 1


def test_unreachable_endpoint_gives_failed_results_quickly():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens here
    c = _client(f"http://127.0.0.1:{port}/v1", retries=1, concurrency=1)
    out = c.complete_many([MSG] * 10)
    assert all(r.text is None for r in out)
    assert out[0].error.startswith("unreachable")
    assert out[-1].error.startswith("skipped: endpoint unreachable")
    assert sum(r.attempts for r in out) == UNREACHABLE_AFTER  # then it stops knocking


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("MRLITE_TEST_KEY")
    with pytest.raises(EndpointError, match="environment variable MRLITE_TEST_KEY, which is not set"):
        _client("http://127.0.0.1:1/v1")
    OpenAIChat("http://127.0.0.1:1/v1", "m", api_key_env="")  # a keyless server is fine


def test_concurrent_results_keep_their_order():
    with StubServer(lambda body: chat_reply(body["messages"][0]["content"].upper())) as s:
        out = _client(s.url, concurrency=4).complete_many([[{"role": "user", "content": f"q{i}"}] for i in range(12)])
    assert [r.text for r in out] == [f"Q{i}" for i in range(12)] and s.hits == 12


@pytest.mark.parametrize("spec", ["openai:http://x/v1", "openai:#m", "http://x/v1#m", "openai:ftp://x#m"])
def test_bad_judge_spec(spec):
    with pytest.raises(EndpointError, match="expected openai:<base_url>#<model>"):
        parse_judge_spec(spec)
    assert parse_judge_spec("openai:https://api.x.com/v1/#gpt") == ("https://api.x.com/v1", "gpt")
