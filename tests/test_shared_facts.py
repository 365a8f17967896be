"""Small shared facts: the percent format (``mrlite.core.fmt``), native bf16 detection (``mrlite.hardware.cpu``), the "prompt
leaves room for an answer" rule (``backends.base.fits``) and chat-template ids (``backends.tokens``)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from mrlite.core.fmt import pct
from mrlite.hardware.cpu import cpu_has_bf16, native_bf16


@pytest.mark.parametrize(("args", "kw", "shown"), [
    ((0.4567,), {}, "46%"),
    ((0.4567, 1), {}, "45.7%"),
    ((None,), {}, "n/a"),
    ((None, 1), {"none": "–"}, "–"),
    ((0.5, 1), {"unit": ""}, "50.0"),
    ((1.0,), {}, "100%"),
])
def test_pct(args, kw, shown) -> None:
    assert pct(*args, **kw) == shown


@pytest.mark.parametrize(("flags", "native"), [
    ("fpu sse avx2 avx512f", False),        # AVX2/AVX-512 without bf16: emulated, so not native
    ("fpu avx512f avx512_bf16", True),
    ("fpu amx_tile amx_bf16", True),
])
def test_cpu_bf16_from_cpuinfo(tmp_path: Path, flags: str, native: bool) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_bf16(info) is native


def test_unreadable_cpuinfo_is_not_bf16(tmp_path: Path) -> None:
    assert cpu_has_bf16(tmp_path / "missing") is False


def test_native_bf16_on_cpu_reads_the_cpu(monkeypatch) -> None:
    import mrlite.hardware.cpu

    monkeypatch.setattr(mrlite.hardware.cpu, "cpu_has_bf16", lambda: True)
    assert native_bf16(types.SimpleNamespace(type="cpu")) is True
    monkeypatch.setattr(mrlite.hardware.cpu, "cpu_has_bf16", lambda: False)
    assert native_bf16(types.SimpleNamespace(type="cpu")) is False


def test_fits_leaves_room_for_an_answer() -> None:
    from mrlite.backends.base import GenRequest, fits

    class Counter:  # prompt length = the number in the message
        def prompt_lengths(self, requests):
            return [int(r.messages[0]["content"]) for r in requests]

    reqs = [GenRequest(f"r{n}", [{"role": "user", "content": str(n)}], 1, 0) for n in (10, 48, 49)]
    assert fits(Counter(), reqs, 64) == [True, True, False]  # 64 - 16 = 48 tokens of prompt at most
    assert fits(Counter(), reqs, 64, room=54) == [True, False, False]
    assert fits(Counter(), [], 64) == []


class _Tok:
    def __init__(self, batch: bool) -> None:
        self.batch, self.seen = batch, []

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True, return_dict=False):
        self.seen.append((add_generation_prompt, tokenize, return_dict))
        ids = [1] + [len(m["content"]) for m in messages] + ([9] if add_generation_prompt else [])
        return {"input_ids": ids} if self.batch else tuple(ids)


@pytest.mark.parametrize("batch", [False, True])  # a plain sequence, or a BatchEncoding-like mapping
def test_chat_ids(batch: bool) -> None:
    from mrlite.backends.tokens import chat_ids

    tok = _Tok(batch)
    msgs = [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "de"}]
    assert chat_ids(tok, msgs, add_generation_prompt=False) == [1, 3, 2]
    assert chat_ids(tok, msgs[:1], add_generation_prompt=True) == [1, 3, 9]
    assert tok.seen == [(False, True, False), (True, True, False)]
