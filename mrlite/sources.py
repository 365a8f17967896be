"""Prompt and EFT sources: the shipped sets, local JSONL/CSV/Parquet files, or a Hub dataset (via ``datasets``).

Validation drops and counts empty and duplicate prompts; structural problems (missing column, duplicate ids,
unreadable file) raise SourceError with one line. Exercised by: ``mrlite run recipes/smoke.yaml``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import json
import re
from dataclasses import dataclass, field
from pathlib import Path


class SourceError(ValueError):
    """A data-source problem a user can fix. One line."""


@dataclass
class PromptPool:
    ids: list[str]
    prompts: list[str]
    identity: str
    stats: dict = field(default_factory=dict)


def builtin_path(name: str) -> Path:
    return Path(str(importlib.resources.files("mrlite") / "data" / name))


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _read_rows(spec: str, split: str) -> tuple[list[dict], str]:
    """Rows of a source and an identity string (content hash for files)."""
    p = Path(spec)
    if p.is_file():
        ident = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        suffix = p.suffix.lower()
        try:
            if suffix in (".jsonl", ".json"):
                rows = []
                with open(p, encoding="utf-8") as f:
                    for i, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise SourceError(f"{p}:{i}: not valid JSON ({e.msg})") from None
                        if not isinstance(row, dict):
                            raise SourceError(f"{p}:{i}: expected a JSON object per line")
                        rows.append(row)
                return rows, ident
            if suffix == ".csv":
                with open(p, encoding="utf-8", newline="") as f:
                    return list(csv.DictReader(f)), ident
            if suffix == ".parquet":
                return _datasets_rows("parquet", split, data_files=str(p)), ident
        except UnicodeDecodeError:
            raise SourceError(f"{p}: not UTF-8 text; save it as UTF-8 JSONL or CSV") from None
        except OSError as e:
            raise SourceError(f"{p}: cannot read ({e.strerror})") from None
        raise SourceError(f"{p}: unsupported file type {suffix!r}; use .jsonl, .csv or .parquet")
    if p.exists():
        raise SourceError(f"{p}: is a directory; point data.prompts at a .jsonl, .csv or .parquet file")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.endswith((".jsonl", ".csv", ".parquet", ".json")):
        return _datasets_rows(spec, split), f"hub:{spec}:{split}"
    raise SourceError(f"data source {spec!r} not found (not a file, and not a Hub dataset id owner/name)")


def _datasets_rows(path: str, split: str, **kw) -> list[dict]:
    try:
        import datasets  # noqa: PLC0415 - optional, heavy
    except ImportError:
        raise SourceError(f"reading {path!r} needs the datasets package: pip install 'mrlite[hf]'") from None
    try:
        ds = datasets.load_dataset(path, split=split, **kw)
    except Exception as e:  # datasets raises many types; the user needs one line
        raise SourceError(f"cannot load dataset {path!r} (split {split!r}): {str(e).splitlines()[0]}") from None
    return [dict(r) for r in ds]


def _prompt_of(row: dict, column: str, where: str) -> str | None:
    if column in row:
        v = row[column]
    elif column == "prompt" and "messages" in row:
        v = row["messages"]
    else:
        raise SourceError(
            f"{where}: no column {column!r}; columns are {', '.join(map(str, row)) or '(none)'}; "
            "set data.column to one of them"
        )
    if isinstance(v, list):  # chat messages → first user turn
        users = [m.get("content") for m in v if isinstance(m, dict) and m.get("role") == "user"]
        v = users[0] if users else None
    if v is None:
        return None
    if not isinstance(v, str):
        raise SourceError(f"{where}: column {column!r} holds {type(v).__name__}, expected text")
    return v


def load_prompt_pool(spec: str, column: str = "prompt", split: str = "train",
                     max_chars: int | None = None) -> PromptPool:
    """Load and validate a prompt pool.

    Args:
        spec: ``builtin``, a local file, or a Hub dataset id.
        column: Column with the prompt (or chat ``messages``: the first user turn is used).
        split: Split of a Hub dataset.
        max_chars: Prompts longer than this are dropped and counted.

    Returns:
        PromptPool with ids (the source's ``id`` column when present, else ``p00000``-style), prompts, an
        identity hash and drop counts.

    Raises:
        SourceError: missing file/column, duplicate ids, or no usable prompt left.
    """
    src = str(builtin_path("prompts.jsonl")) if spec == "builtin" else spec
    rows, ident = _read_rows(src, split)
    if not rows:
        raise SourceError(f"{spec}: no rows; the prompt source is empty")
    ids, prompts, seen_ids, seen = [], [], set(), set()
    stats = {"rows": len(rows), "empty": 0, "duplicates": 0, "too_long": 0}
    for i, row in enumerate(rows):
        text = _prompt_of(row, column, f"{spec} row {i + 1}")
        if text is None or not text.strip():
            stats["empty"] += 1
            continue
        rid = str(row["id"]) if "id" in row and row["id"] not in (None, "") else f"p{i:05d}"
        if rid in seen_ids:
            raise SourceError(f"{spec} row {i + 1}: duplicate id {rid!r}; ids must be unique (or drop the id column)")
        seen_ids.add(rid)
        key = _norm(text)
        if key in seen:
            stats["duplicates"] += 1
            continue
        if max_chars is not None and len(text) > max_chars:
            stats["too_long"] += 1
            continue
        seen.add(key)
        ids.append(rid)
        prompts.append(text)
    if not prompts:
        raise SourceError(f"{spec}: no usable prompt left after dropping {stats}")
    return PromptPool(ids, prompts, ident, stats)


def load_eft_rows(spec: str) -> tuple[list[dict], str]:
    """EFT seed rows ``{prompt, response, judgment}``; ``builtin`` is the shipped set."""
    src = str(builtin_path("eft.jsonl")) if spec == "builtin" else spec
    rows, ident = _read_rows(src, "train")
    for i, r in enumerate(rows, 1):
        for k in ("prompt", "response", "judgment"):
            if not isinstance(r.get(k), str) or not r[k].strip():
                raise SourceError(f"{spec} row {i}: EFT rows need non-empty text fields prompt, response, judgment")
    if not rows:
        raise SourceError(f"{spec}: no EFT rows")
    return rows, ident
