"""The run directory: paths, atomic writes, JSONL I/O, stage markers with fingerprints, and the run lock.

Layout (conventions.md §4.6)::

    runs/<name>/recipe.yaml run.json log.txt timings.jsonl .lock
    runs/<name>/iter_00/            EFT (optional): eft_rows.jsonl adapter/ model/
    runs/<name>/iter_NN/            prompts.jsonl responses.jsonl judgments.jsonl meta_judgments.jsonl
                                    pairs_actor.jsonl pairs_judge.jsonl adapter/ model/ train_metrics.jsonl
    runs/<name>/iter_NN/.done/<stage>.json   marker, written LAST

Markers hold no clock times, so two runs of one recipe give byte-identical files; seconds go to
``timings.jsonl`` and ``log.txt`` (which, with ``run.json`` and ``.lock``, are the only files a resumed run
may touch). Exercised by: ``mrlite run recipes/smoke.yaml`` then ``mrlite status runs/smoke``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from mrlite.errors import MrliteError

MARKER_DIR = ".done"
PARTS_DIR = ".parts"
VOLATILE_FILES = ("log.txt", "run.json", "timings.jsonl", ".lock")
"""Files a resumed or repeated run may change; everything else must be byte-identical."""


class RunDirError(MrliteError, RuntimeError):
    """A run-directory problem a user can fix (stale marker, held lock, corrupt file). One line."""


# --------------------------------------------------------------------------------------------------------------
# atomic I/O


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via ``path.tmp`` + fsync + rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fault_point(f"write:{path.name}")
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_row(row: dict) -> str:
    """One JSONL line. Key order is the caller's; floats as Python prints them (deterministic)."""
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    lines = [dumps_row(r) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file; a corrupt line raises RunDirError naming file and line."""
    return list(iter_jsonl(path))


def iter_jsonl(path: Path) -> Iterator[dict]:
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise RunDirError(f"{path}: file not found") from None
    except OSError as e:
        raise RunDirError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RunDirError(f"{path}:{i}: not valid JSON ({e.msg}); delete the file or fix that line") from None
            if not isinstance(row, dict):
                raise RunDirError(f"{path}:{i}: expected a JSON object per line")
            yield row


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished tmp directory into place, replacing any old one (the marker is written after)."""
    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)
    _fsync_dir(dst.parent)


# --------------------------------------------------------------------------------------------------------------
# fingerprints

_SMALL = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: Path) -> str:
    """Content hash of a file, or of a directory (small files by content, large ones by name + size).

    Large weight files are fingerprinted by size only so that checking an 8B model's 16 GB on every resume
    stays instant; their ``lineage.json`` (adapter hashes) is hashed in full and carries the identity.
    """
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        rel = p.relative_to(path).as_posix()
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if size <= _SMALL:
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from (run seed, iteration, stage, row id, ...): independent of call order and batching."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


# --------------------------------------------------------------------------------------------------------------
# the run directory


class RunDir:
    """Paths and markers of one run directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def iter_dir(self, t: int) -> Path:
        return self.root / f"iter_{t:02d}"

    def path(self, t: int, name: str) -> Path:
        return self.iter_dir(t) / name

    def marker_path(self, t: int, stage: str) -> Path:
        return self.iter_dir(t) / MARKER_DIR / f"{stage}.json"

    def parts_dir(self, t: int, stage: str) -> Path:
        return self.iter_dir(t) / PARTS_DIR / stage

    def read_marker(self, t: int, stage: str) -> dict | None:
        p = self.marker_path(t, stage)
        if not p.exists():
            return None
        try:
            marker = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            # A marker is written atomically, so a bad one was edited by hand: treat as absent (stage re-runs).
            return None
        return marker if isinstance(marker, dict) else None

    def write_marker(self, t: int, stage: str, marker: dict) -> None:
        atomic_write_json(self.marker_path(t, stage), marker)

    def remove_marker(self, t: int, stage: str) -> None:
        p = self.marker_path(t, stage)
        if p.exists():
            p.unlink()

    def iterations_present(self) -> list[int]:
        out = []
        for p in self.root.glob("iter_*"):
            try:
                out.append(int(p.name[5:]))
            except ValueError:
                pass
        return sorted(out)

    def append_timing(self, row: dict) -> None:
        with open(self.root / "timings.jsonl", "a", encoding="utf-8") as f:
            f.write(dumps_row(row) + "\n")

    # ---- lock ------------------------------------------------------------------------------------------------

    def acquire_lock(self) -> None:
        """Refuse a second live run on this directory; take over a lock left by a dead process."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / ".lock"
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        # The lock appears with its content already in it (tmp file + hard link), so another process never
        # reads a half-written lock and mistakes it for garbage.
        tmp = self.root / f".lock.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(me))
        try:
            self._link_lock(tmp, lock)
        finally:
            tmp.unlink(missing_ok=True)

    def _link_lock(self, tmp: Path, lock: Path) -> None:
        for _ in range(2):
            try:
                try:
                    os.link(tmp, lock)
                except FileExistsError:
                    raise
                except OSError:  # a file system without hard links (some network mounts): exclusive create
                    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                    with os.fdopen(fd, "w") as f:
                        f.write(tmp.read_text())
            except FileExistsError:
                holder = _read_lock(lock)
                if holder and _alive(holder):
                    other = holder.get("host") != socket.gethostname()
                    raise RunDirError(
                        f"{self.root} is in use by another run (pid {holder.get('pid')} on {holder.get('host')}); "
                        + (f"if that machine is gone (e.g. a disconnected Colab), delete {lock} and run again"
                           if other else "wait for it to finish or use another --out")
                    ) from None
                lock.unlink(missing_ok=True)  # stale lock from a killed run
                continue
            return
        raise RunDirError(f"{lock}: could not take the run lock; delete the file if no run is active")

    def release_lock(self) -> None:
        lock = self.root / ".lock"
        holder = _read_lock(lock)
        if holder and holder.get("pid") == os.getpid():
            lock.unlink(missing_ok=True)


def _read_lock(lock: Path) -> dict | None:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    # Anything but {"pid": int > 0, "host": str} (a bare pid, a half-written file) is garbage: take it over.
    ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and holder["pid"] > 0
    return holder if ok and isinstance(holder.get("host"), str) else None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot check another machine's process: assume it lives
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                return False
    except OSError:
        pass
    return True


# --------------------------------------------------------------------------------------------------------------
# fault injection (tests of kill + resume)

_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die here with ``os._exit(99)`` — no cleanup, like a kill — when ``MRLITE_FAULT`` names this point.

    ``MRLITE_FAULT=judge:chunk@2`` dies the second time the ``judge:chunk`` point is reached;
    ``write:<file name>`` points sit between writing a tmp file and renaming it into place.
    """
    spec = os.environ.get("MRLITE_FAULT")
    if not spec:
        return
    target, _, count = spec.partition("@")
    if target != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] >= int(count or 1):
        os._exit(99)
