"""Prompt and EFT sources: the shipped sets, local JSONL/CSV/Parquet files, or a Hub dataset (via ``datasets``).

Validation drops and counts empty and duplicate prompts; structural problems (missing column, duplicate ids,
unreadable file) raise SourceError with one line. Exercised by: ``mrlite run recipes/smoke.yaml``.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mrlite.errors import MrliteError
from mrlite.rundir import RunDirError, read_jsonl, sha256_file


class SourceError(MrliteError, ValueError):
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


def normalize_prompt(text: str) -> str:
    """The key duplicates are detected by: lower case, whitespace runs collapsed, ends stripped."""
    return _norm(text)


def _read_rows(spec: str, split: str, revision: str | None = None) -> tuple[list[dict], str]:
    """Rows of a source and an identity string (content hash for files; id, split and revision for the Hub)."""
    p = Path(spec)
    if p.is_file():
        ident = sha256_file(p)[:16]
        suffix = p.suffix.lower()
        try:
            if suffix == ".json" and _starts_with_bracket(p):  # a JSON array, e.g. AlpacaEval's eval set
                return _json_array_rows(p), ident
            if suffix in (".jsonl", ".json"):
                try:
                    return read_jsonl(p), ident
                except RunDirError as e:
                    raise SourceError(str(e).replace("; delete the file or fix that line", "")) from None
            if suffix == ".csv":
                with open(p, encoding="utf-8", newline="") as f:
                    return list(csv.DictReader(f)), ident
            if suffix == ".parquet":
                return _datasets_rows("parquet", "train", data_files=str(p)), ident  # one file = one split
        except UnicodeDecodeError:
            raise SourceError(f"{p}: not UTF-8 text; save it as UTF-8 JSONL or CSV") from None
        except OSError as e:
            raise SourceError(f"{p}: cannot read ({e.strerror})") from None
        raise SourceError(f"{p}: unsupported file type {suffix!r}; use .jsonl, .csv or .parquet")
    if p.is_dir():
        return _dir_rows(p, split)
    if is_hub_id(spec):
        kw = {"revision": revision} if revision else {}
        return _datasets_rows(spec, split, hub=True, **kw), f"hub:{spec}:{split}" + (f"@{revision}" if revision else "")
    raise SourceError(
        f"data source {spec!r} not found: tried a local file or folder {str(p.resolve())!r} and a Hub dataset id "
        "(owner/name); use 'builtin', a .jsonl/.csv/.parquet path or a Hub id"
    )


def is_hub_id(spec: str) -> bool:
    """``owner/name`` that is not a data-file name: read with ``datasets`` (when no such local path exists)."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", spec) is not None and not spec.endswith(
        (".jsonl", ".csv", ".parquet", ".json"))


def _starts_with_bracket(p: Path) -> bool:
    with open(p, encoding="utf-8") as f:
        head = f.read(4096).lstrip("\ufeff \t\r\n")
    return head.startswith("[")


def _json_array_rows(p: Path) -> list[dict]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SourceError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not all(isinstance(r, dict) for r in data):
        raise SourceError(f"{p}: expected a JSON array of objects")
    return data


def read_rows(spec: str, split: str = "train", revision: str | None = None) -> tuple[list[dict], str]:
    """Raw rows of a source (file, folder or Hub id) and its identity; no validation (OA trees, EFT, ...).
    ``revision`` pins a Hub dataset's branch, tag or commit (ignored for local sources)."""
    return _read_rows(spec, split, revision)


def _dir_rows(p: Path, split: str) -> tuple[list[dict], str]:
    """A local folder: a dataset saved with ``save_to_disk``, or a Hub-style folder (a snapshot or data files),
    which ``datasets.load_dataset`` reads exactly as it reads a Hub id (splits from the card or file names)."""
    from mrlite.rundir import fingerprint

    ident = fingerprint(p)[:16]
    if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
        return _disk_rows(p, split), ident
    return _datasets_rows(str(p), split), ident


def _disk_rows(p: Path, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise SourceError(f"reading {str(p)!r} needs the datasets package: pip install 'mrlite[hf]'") from None
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # one line for the user
        raise SourceError(f"cannot load dataset folder {str(p)!r}: {str(e).splitlines()[0]}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SourceError(f"{p}: no split {split!r}; splits are {', '.join(ds)}")
        ds = ds[split]
    return [dict(r) for r in ds]


def _datasets_rows(path: str, split: str, hub: bool = False, **kw) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise SourceError(f"reading {path!r} needs the datasets package: pip install 'mrlite[hf]'") from None
    try:
        ds = datasets.load_dataset(path, split=split, **kw)
    except Exception as e:  # datasets raises many types; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SourceError(f"cannot load dataset {path!r} (split {split!r}): {first}"
                          + (f"; {hub_hint()}" if hub else "")) from None
    return [dict(r) for r in ds]


def hub_hint() -> str:
    """How to fix a Hub dataset that could not be loaded (offline mode, network, token), in one clause."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return ("HF_HUB_OFFLINE is set and the dataset is not in the local cache: unset HF_HUB_OFFLINE (or download "
                "it once online), or point at a local file or folder")
    return ("check the network (and HF_ENDPOINT if set), the dataset id and revision, and HF_TOKEN for a gated or "
            "private dataset; offline, point at a local file or folder")


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


def validation_table(pool: PromptPool) -> list[tuple[str, int]]:
    """``(check, count)`` rows for a pool: rows read, each kind of drop, prompts kept (``mrlite data check``)."""
    s = pool.stats
    rows = [("rows read", s.get("rows", 0)), ("empty prompts (dropped)", s.get("empty", 0)),
            ("duplicates after normalising case/space (dropped)", s.get("duplicates", 0)),
            ("over the character limit (dropped)", s.get("too_long", 0))]
    return [*rows, ("prompts kept", len(pool.prompts))]


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


EFT_OASST = "oasst:"


def eft_source(spec: str) -> tuple[str, str]:
    """What ``eft.data`` names: ``("builtin", path)``, ``("rows", path)`` (a JSONL of ready rows) or
    ``("oasst", source)`` (Open Assistant ranked replies to build the rows from inside the run)."""
    if spec == "builtin":
        return "builtin", str(builtin_path("eft.jsonl"))
    if spec.startswith(EFT_OASST):
        return "oasst", spec[len(EFT_OASST):].strip()
    return "rows", spec
