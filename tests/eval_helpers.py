"""Test helpers for the data/eval/report tests: a scripted Generator and a stub OpenAI-compatible server."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import mrlite

from mrlite.backends.base import Completion, GenRequest, Sampling


class ScriptedGenerator:
    """Generator whose k-th completion of a request is ``fn(request, k)``; records every request."""

    def __init__(self, fn: Callable[[GenRequest, int], str]):
        self.fn = fn
        self.requests: list[GenRequest] = []

    def generate(self, requests: list[GenRequest], sampling: Sampling) -> list[list[Completion]]:
        self.requests += requests
        return [[Completion(self.fn(r, k), False, 1) for k in range(r.n)] for r in requests]

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def prompt_lengths(self, requests: list[GenRequest]) -> list[int]:
        return [sum(len(m["content"].split()) for m in r.messages) for r in requests]

    def close(self) -> None:
        pass


class StubServer:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 (random port), answering with ``reply``.

    ``reply(body) -> (status, payload)``: ``payload`` is a dict (sent as JSON) or raw text. ``hits`` counts requests;
    ``auth`` keeps the Authorization headers seen.
    """

    def __init__(self, reply: Callable[[dict], tuple[int, dict | str]]):
        self.reply, self.hits, self.auth, self.lock = reply, 0, [], threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # the name http.server calls
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.hits += 1
                    stub.auth.append(self.headers.get("Authorization"))
                    status, payload = stub.reply(body)
                data = (json.dumps(payload) if isinstance(payload, dict) else payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def chat_reply(text: str) -> tuple[int, dict]:
    return 200, {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """A finished smoke run (fake backend), made once per test module."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    mrlite.run(mrlite.load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"), out)
    return out


@pytest.fixture
def run(smoke_run, tmp_path) -> Path:
    """A private copy of the smoke run (eval and report write into it)."""
    return Path(shutil.copytree(smoke_run, tmp_path / "run"))


def alpacaeval_reference(annotations: list[dict]) -> tuple[float, float]:
    """AlpacaEval 2's length-controlled win rate without its instruction-difficulty term, written directly from
    its definition (independent of mrlite.eval.winrate): ``(raw win rate, LC win rate)`` from AlpacaEval annotation rows.

    Preference p = ``preference`` − 1 (AlpacaEval's 0 = draw counts ½); Δ = len(output_1) − len(output_2) in
    characters (baseline minus model, as AlpacaEval), scaled by its sample std (ddof 1); logistic model
    ``logit p = θ + β tanh(Δ/std)`` fitted by maximum likelihood on the continuous targets (scipy, no penalty);
    LC = the mean prediction at Δ = 0, i.e. σ(θ).
    """
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    p = np.array([1.5 if r["preference"] == 0 else r["preference"] for r in annotations], float) - 1
    d = np.array([len(r["output_1"]) - len(r["output_2"]) for r in annotations], float)
    x = np.tanh(d / d.std(ddof=1))

    def nll(w):
        z = w[0] + w[1] * x
        return -(p * log_expit(z) + (1 - p) * log_expit(-z)).sum()

    def grad(w):
        r = expit(w[0] + w[1] * x) - p
        return np.array([r.sum(), (r * x).sum()])

    w = minimize(nll, np.zeros(2), jac=grad, method="BFGS", options={"gtol": 1e-10}).x
    return float(p.mean()), float(expit(w[0]))
