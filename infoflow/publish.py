"""Step 6 of the pipeline: push exactly the files the build wrote to a gh-pages branch.

The allow-list is the site marker (sitedir.MARKER): every file the build wrote, with its sha256.
Anything else in the folder (a stray .env, a key, weights), any changed file and any symlink
stops the publish before anything is pushed, and is named. What is pushed is a copy of the
listed files, plus .nojekyll and CNAME.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .sitedir import MARKER, read_marker, resolve_out, sha256_file

EXTRA = {".nojekyll", "CNAME"}        # published although the build's list may lack them


class PublishError(Exception):
    """Publishing stopped before anything was pushed; the message says why."""


@dataclass
class PublishResult:
    pushed: bool
    commit: str | None
    files: int
    message: str
    paths: list[str] = field(default_factory=list)


def _git(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check)


def site_files(out: Path) -> list[str]:
    """The files to publish (relative paths), checked against the build's list."""
    marker = read_marker(out)
    if marker is None:
        raise PublishError(f"{out} holds no site written by `infoflow build` (no {MARKER}); "
                           "run `infoflow build` first.")
    listed: dict[str, str] = marker["files"]
    problems = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_symlink():
            problems.append(f"{rel} (a symlink)")
        elif path.is_file() and rel != MARKER:
            if rel not in listed and rel not in EXTRA:
                problems.append(f"{rel} (not written by the build)")
            elif rel in listed and sha256_file(path) != listed[rel]:
                problems.append(f"{rel} (changed since the build)")
    problems += [f"{rel} (missing)" for rel in listed if not (out / rel).is_file()]
    if problems:
        shown = ", ".join(problems[:40]) + (f", and {len(problems) - 40} more" if len(problems) > 40 else "")
        raise PublishError(f"refusing to publish {out}: {shown}. Publish pushes only what the build "
                           "wrote: remove those files, or run `infoflow build` again.")
    return sorted(set(listed) | {rel for rel in EXTRA if (out / rel).is_file()})


def read_cname(out: Path, cname: str | None) -> str | None:
    """--cname, else a CNAME in site_src/, else the one the site already has."""
    if cname:
        return cname.strip()
    from .site import SITE_SRC
    for path in (SITE_SRC / "CNAME", out / "CNAME"):
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
    return None


def publish(out: Path, *, remote: str = "origin", branch: str = "gh-pages", message: str | None = None,
            cname: str | None = None, dry_run: bool = False, repo: Path | None = None) -> PublishResult:
    out = resolve_out(Path(out)).resolve()
    repo = Path(repo or Path.cwd()).resolve()
    paths = site_files(out)
    cname = read_cname(out, cname)
    message = message or f"Publish infoflow gallery ({len(paths)} files)"
    if dry_run:
        return PublishResult(False, None, len(paths), f"dry run: would push {len(paths)} files from {out} "
                             f"to {remote}/{branch}" + (f" with CNAME {cname}" if cname else ""), paths)
    if _git("rev-parse", "--git-dir", cwd=repo, check=False).returncode != 0:
        raise PublishError(f"{repo} is not a git repository; run publish inside your clone.")
    if _git("remote", "get-url", remote, cwd=repo, check=False).returncode != 0:
        raise PublishError(f"no git remote named {remote!r}; add one or pass --remote.")

    _git("fetch", "--quiet", remote, f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}",
         cwd=repo, check=False)   # a first publish has no branch yet
    before = _git("rev-parse", "--verify", "--quiet", f"refs/remotes/{remote}/{branch}",
                  cwd=repo, check=False).stdout.strip() or None

    import ghp_import
    env = {}
    if not _git("config", "user.name", cwd=repo, check=False).stdout.strip():
        env = {"GIT_COMMITTER_NAME": "infoflow", "GIT_COMMITTER_EMAIL": "infoflow@localhost"}
    with tempfile.TemporaryDirectory(prefix="infoflow-publish-") as tmp, contextlib.chdir(repo), _environ(env):
        for rel in paths:                       # a copy of exactly the listed files
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / rel, Path(tmp) / rel)
        try:
            ghp_import.ghp_import(tmp, mesg=message, remote=remote, branch=branch, push=False,
                                  nojekyll=True, cname=cname)
        except ghp_import.GhpError as e:
            raise PublishError(f"ghp-import failed: {e}") from e
    after = _git("rev-parse", f"refs/heads/{branch}", cwd=repo).stdout.strip()
    if before and _tree(repo, before) == _tree(repo, after):
        _git("update-ref", f"refs/heads/{branch}", before, cwd=repo)     # drop the empty commit
        return PublishResult(False, before, len(paths), f"{remote}/{branch} already has this site; nothing pushed",
                             paths)
    push = _git("push", "--quiet", remote, f"refs/heads/{branch}:refs/heads/{branch}", cwd=repo, check=False)
    if push.returncode != 0:
        raise PublishError(f"git push to {remote} failed: {push.stderr.strip()}")
    return PublishResult(True, after, len(paths), f"pushed {len(paths)} files to {remote}/{branch} ({after[:10]})",
                         paths)


def _tree(repo: Path, commit: str) -> str:
    return _git("rev-parse", f"{commit}^{{tree}}", cwd=repo).stdout.strip()


@contextlib.contextmanager
def _environ(extra: dict):
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
