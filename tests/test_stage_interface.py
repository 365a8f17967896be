"""Every stage provides the one ``Stage`` interface the runner relies on, with the same parameters."""

from __future__ import annotations

import inspect
import sys
import types

import pytest

from mrlite.stages import STAGE_MEMBERS, STAGES, Stage, module


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_stage_members_are_the_protocol() -> None:
    assert set(STAGE_MEMBERS) == {n for n, v in vars(Stage).items() if inspect.isfunction(v) and not n.startswith("_")}


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_provides_the_interface(stage: str) -> None:
    mod = module(stage)
    assert mod.__name__ == f"mrlite.stages.{stage}"
    for member in STAGE_MEMBERS:
        fn = getattr(mod, member)
        assert len(_params(fn)) == len(_params(getattr(Stage, member))), f"{stage}.{member}{inspect.signature(fn)}"


def test_a_stage_missing_a_member_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = types.ModuleType("mrlite.stages.half_done")
    broken.applies = broken.inputs = broken.outputs = broken.config = lambda ctx: None
    monkeypatch.setitem(sys.modules, "mrlite.stages.half_done", broken)
    with pytest.raises(TypeError, match=r"mrlite\.stages\.half_done does not provide run, summary_line \(every stage"):
        module("half_done")
