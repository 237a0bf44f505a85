"""Step 6 of the pipeline: push build/ to a gh-pages branch with ghp-import."""
from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Never publish these, whatever ends up in the output folder by accident.
FORBIDDEN = (".env", "*.safetensors", "*.gguf", "*.bin", "*.pt", "*.pth", "*.key", "id_rsa*")


class PublishError(Exception):
    """Publishing stopped before anything was pushed; the message says why."""


@dataclass
class PublishResult:
    pushed: bool
    commit: str | None
    files: int
    message: str


def _git(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check)


def forbidden_files(out: Path) -> list[Path]:
    return sorted({p for pattern in FORBIDDEN for p in out.rglob(pattern)})


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
    out = Path(out).resolve()
    repo = Path(repo or Path.cwd()).resolve()
    if not (out / "index.html").is_file():
        raise PublishError(f"{out} holds no built site (no index.html); run `infoflow build` first.")
    bad = forbidden_files(out)
    if bad:
        raise PublishError("refusing to publish files that must stay private: "
                           + ", ".join(str(p.relative_to(out)) for p in bad))
    files = sum(1 for p in out.rglob("*") if p.is_file())
    cname = read_cname(out, cname)
    message = message or f"Publish infoflow gallery ({files} files)"
    if dry_run:
        return PublishResult(False, None, files, f"dry run: would push {files} files from {out} to "
                             f"{remote}/{branch}" + (f" with CNAME {cname}" if cname else ""))
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
    with contextlib.chdir(repo), _environ(env):
        try:
            ghp_import.ghp_import(str(out), mesg=message, remote=remote, branch=branch, push=False,
                                  nojekyll=True, cname=cname)
        except ghp_import.GhpError as e:
            raise PublishError(f"ghp-import failed: {e}") from e
    after = _git("rev-parse", f"refs/heads/{branch}", cwd=repo).stdout.strip()
    if before and _tree(repo, before) == _tree(repo, after):
        _git("update-ref", f"refs/heads/{branch}", before, cwd=repo)     # drop the empty commit
        return PublishResult(False, before, files, f"{remote}/{branch} already has this site; nothing pushed")
    push = _git("push", "--quiet", remote, f"refs/heads/{branch}:refs/heads/{branch}", cwd=repo, check=False)
    if push.returncode != 0:
        raise PublishError(f"git push to {remote} failed: {push.stderr.strip()}")
    return PublishResult(True, after, files, f"pushed {files} files to {remote}/{branch} ({after[:10]})")


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
