"""How numbers are shown to people (CLI lines, logs, report tables): one place for the percent format.

Pure and dependency-free, so every layer can use it. Exercised by: ``mrlite run recipes/smoke.yaml`` (the
meta-judge stage's summary line).
"""

from __future__ import annotations


def pct(x: float | None, digits: int = 0, none: str = "n/a", unit: str = "%") -> str:
    """A share in [0, 1] as a percentage: ``pct(0.4567, 1) == "45.7%"``; ``None`` (undefined) shows ``none``.

    Args:
        x: The share, or ``None``.
        digits: Decimals after the point.
        none: What an undefined share shows (``"n/a"``; tables use ``"–"``).
        unit: Appended to the number (``""`` where a column header carries the ``%``).
    """
    return none if x is None else f"{100 * x:.{digits}f}{unit}"


__all__ = ["pct"]
