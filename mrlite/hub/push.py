"""``mrlite push``: share an iteration's model (merged, or only its adapter) or the run's data on the Hub.

The files to upload are first laid out in one folder (``--dry-run DIR`` stops there and leaves them in DIR), then
sent in one ``huggingface_hub`` commit: files already on the Hub with the same content are skipped, so
a second push after a network error resumes instead of duplicating. The token comes from ``HF_TOKEN`` or the
login cache (``hf auth login``), never from a flag or a file of ours, and is never logged.
Exercised by: ``mrlite push runs/smoke --iter 1 --repo me/smoke --dry-run /tmp/smoke-card``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import click

from mrlite.hub import cards
from mrlite.errors import MrliteError
from mrlite.rundir import RunDir, RunDirError

log = logging.getLogger(__name__)

RETRIES = 3
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class PushError(MrliteError, RuntimeError):
    """A push problem a user can fix (no token, bad repo name, nothing to push, network). One line."""


def check_repo(repo: str) -> str:
    if not _REPO.match(repo) or ".." in repo or "--" in repo or repo.endswith((".", "-")):
        raise PushError(f"--repo {repo!r}: expected OWNER/NAME (letters, digits, '-', '_', '.'), e.g. --repo "
                        "alice/tiny-meta-rewarding")
    return repo


def _run_dir(run_dir: str | Path) -> RunDir:
    rd = RunDir(Path(run_dir))
    if not (rd.root / "recipe.yaml").is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no recipe.yaml); pass the --out of a run, e.g. runs/smoke")
    return rd


def _place(src: Path, dst: Path) -> None:
    """Hard-link (weights can be gigabytes) or copy ``src`` to ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _datasets_of(recipe: dict) -> list[str]:
    out = []
    for spec in (recipe.get("data", {}).get("prompts"), (recipe.get("eft") or {}).get("data")):
        if isinstance(spec, str) and cards.is_hub_id(spec) and spec not in out:
            out.append(spec)
    return out


def stage_model(rd: RunDir, t: int, repo: str, out: Path, *, adapter: bool = False) -> list[str]:
    """Lay out the model repo of iteration ``t`` in ``out``; returns the relative paths written."""
    import yaml

    model = rd.path(t, "model")
    src = rd.path(t, "adapter") if adapter else model
    needed = src / "adapter_config.json" if adapter else model / "lineage.json"
    if rd.read_marker(t, "eft" if t == 0 else "train") is None or not needed.is_file():
        rel = needed.relative_to(rd.path(t, ""))
        have = [k for k in rd.iterations_present() if (rd.path(k, "") / rel).is_file()]
        what = f"adapter (iter_{t:02d}/adapter)" if adapter else f"merged model (iter_{t:02d}/model)"
        raise PushError(f"{rd.root}: iteration {t} has no {what} yet; "
                        + (f"iterations with one: {', '.join(map(str, have))}" if have else
                           "finish its train stage first (mrlite run RECIPE --out " + str(rd.root) + ")"))
    written = []
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        rel = p.relative_to(src).as_posix()
        if rel == "README.md":
            continue
        _place(p, out / rel)
        written.append(rel)
    if adapter and (model / "lineage.json").is_file():
        _place(model / "lineage.json", out / "lineage.json")
        written.append("lineage.json")
    if adapter:
        hub_base = cards.adapter_base(rd, t)
        cfg_path = out / "adapter_config.json"
        if hub_base and cfg_path.is_file():  # the run-relative base path means nothing on the Hub
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            cfg["base_model_name_or_path"] = hub_base
            cfg_path.unlink()  # a hard link to the run's file: write a new one instead
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    plots = []
    for p in sorted((rd.root / "report").glob("*.png")):
        _place(p, out / "plots" / p.name)
        plots.append(f"plots/{p.name}")
    recipe = yaml.safe_load((rd.root / "recipe.yaml").read_text(encoding="utf-8"))
    card = cards.model_card(rd, t, repo, adapter=adapter, plots=plots, datasets=_datasets_of(recipe))
    (out / "README.md").write_text(card, encoding="utf-8")
    return sorted({*written, *plots, "README.md"})


def stage_data(rd: RunDir, repo: str, out: Path) -> list[str]:
    """Lay out the dataset repo of the run in ``out`` (same relative paths as the run dir)."""
    layout = cards.dataset_layout(rd)
    if not layout:
        raise PushError(f"{rd.root}: no finished stage has written data yet; run at least the sample stage")
    written = []
    for splits in layout.values():
        for _, rel in splits:
            _place(rd.root / rel, out / rel)
            written.append(rel)
    (out / "README.md").write_text(cards.dataset_card(rd, repo, layout), encoding="utf-8")
    return sorted([*written, "README.md"])


def _fresh_dir(dry_run: Path) -> Path:
    if dry_run.exists() and (not dry_run.is_dir() or any(dry_run.iterdir())):
        raise PushError(f"--dry-run {dry_run}: exists and is not empty; pass a new or empty directory")
    dry_run.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dry_run.name}.", dir=dry_run.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def token_or_fail() -> None:
    """Check that a token is available (env or login cache) without ever reading it into our logs."""
    from huggingface_hub import get_token

    if not get_token():
        raise PushError("no Hugging Face token: run `hf auth login` (or set HF_TOKEN in the environment), then push "
                        "again")


_NETWORK_ERRORS = {"TransportError", "NetworkError", "TimeoutException", "ConnectError", "RemoteProtocolError",
                   "ReadError", "WriteError", "ConnectionError", "Timeout"}


def _transient(e: BaseException) -> bool:
    """A network failure or a 5xx/429 answer: worth another try."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        code = getattr(getattr(e, "response", None), "status_code", None)
        return code is None or code >= 500 or code == 429
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    return any(c.__name__ in _NETWORK_ERRORS for c in type(e).__mro__)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("…" if len(text) > 300 else "")


def upload(folder: Path, repo: str, *, repo_type: str, private: bool, message: str,
           retries: int = RETRIES, wait: float = 2.0) -> str:
    """Create the repo (if needed) and upload ``folder``; retries transient errors. Returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    last: BaseException | None = None
    for attempt in range(1, retries + 1):
        try:
            api.create_repo(repo, repo_type=repo_type, private=private, exist_ok=True)
            # One commit; the Hub skips files whose content it already has, so a retry or a second push
            # re-sends only what is missing or changed.
            ops = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                   for p in files]
            info = api.create_commit(repo, ops, repo_type=repo_type, commit_message=message)
            return str(getattr(info, "commit_url", info))
        except Exception as e:
            if not _transient(e):
                code = getattr(getattr(e, "response", None), "status_code", None)
                if isinstance(e, HfHubHTTPError) and code in (401, 403):
                    raise PushError(f"the Hub refused the token for {repo} (HTTP {code}); run `hf auth login` with "
                                    "a token that can write to that namespace") from None
                raise PushError(f"push to {repo} failed: {_one_line(e)}") from None
            last = e
            log.warning("push to %s: attempt %d of %d failed (%s)%s", repo, attempt, retries, _one_line(e),
                        "; retrying" if attempt < retries else "")
            if attempt < retries:
                time.sleep(wait * attempt)
    raise PushError(f"push to {repo} failed after {retries} tries ({_one_line(last)}); run the same `mrlite push` "
                    "again: files already on the Hub are skipped")


def push(run_dir: str | Path, repo: str, *, t: int | None = None, data: bool = False, adapter: bool = False,
         private: bool = False, dry_run: str | Path | None = None) -> tuple[Path | str, list[str]]:
    """Lay out and upload (or, with ``dry_run``, only lay out) a model or the run's data.

    Returns:
        (where: the dry-run directory or the commit URL, the list of files).

    Raises:
        PushError, RunDirError: one line each.
    """
    check_repo(repo)
    rd = _run_dir(run_dir)
    if data == (t is not None):
        raise PushError("choose what to push: --iter T (a model) or --data (the run's files), not both or neither")
    if data and adapter:
        raise PushError("--adapter goes with --iter T (a model), not with --data")
    if dry_run is None:
        token_or_fail()
    tmp = _fresh_dir(Path(dry_run)) if dry_run is not None else Path(tempfile.mkdtemp(prefix="mrlite-push-"))
    try:
        files = stage_data(rd, repo, tmp) if data else stage_model(rd, t, repo, tmp, adapter=adapter)
        if dry_run is not None:
            dst = Path(dry_run)
            if dst.exists():
                dst.rmdir()
            os.replace(tmp, dst)
            return dst, files
        what = "data" if data else f"iteration {t} {'adapter' if adapter else 'model'}"
        url = upload(tmp, repo, repo_type="dataset" if data else "model", private=private,
                     message=f"mrlite: {what} of run {json.dumps(rd.root.name)}")
        return url, files
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@click.command("push")
@click.argument("run_dir", type=click.Path())
@click.option("--repo", required=True, metavar="OWNER/NAME", help="Hub repository to create or update.")
@click.option("--iter", "t", type=int, help="Push the merged model of iteration T (0 = the EFT model).")
@click.option("--data", is_flag=True, help="Push the run's prompts, responses, judgments, meta-judgments and pairs "
              "as a dataset repo.")
@click.option("--adapter", is_flag=True, help="Push only iteration T's LoRA adapter (the card names its base).")
@click.option("--private", is_flag=True, help="Create the repository private.")
@click.option("--dry-run", "dry_run", type=click.Path(file_okay=False), metavar="DIR",
              help="Write exactly what would be uploaded into DIR; upload nothing.")
def push_cmd(run_dir, repo, t, data, adapter, private, dry_run):
    """Share iteration T's model (or the run's data) on the Hugging Face Hub, with a card.

    The token comes from HF_TOKEN or `hf auth login`. A push interrupted by a network error resumes when run
    again: files already on the Hub are skipped.

    \b
    Examples:
      mrlite push runs/tiny --iter 2 --repo alice/tiny-mr --dry-run /tmp/tiny-card
      mrlite push runs/tiny --iter 2 --repo alice/tiny-mr
      mrlite push runs/tiny --iter 2 --repo alice/tiny-mr-lora --adapter --private
      mrlite push runs/tiny --data --repo alice/tiny-mr-data
    """
    from mrlite.errors import setup_cli_logging, user_errors

    @user_errors("Run the same command again: files already uploaded are skipped.")
    def go():
        setup_cli_logging(0, False)
        where, files = push(run_dir, repo, t=t, data=data, adapter=adapter, private=private, dry_run=dry_run)
        verb = "wrote" if dry_run is not None else "pushed"
        click.echo(f"{verb} {len(files)} files → {where}")

    go()
