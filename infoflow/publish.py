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
    removed: list[str] = field(default_factory=list)   # the branch's files the push removes


def _git(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check)


def site_files(out: Path) -> list[str]:
    """The files to publish (relative paths), checked against the build's list."""
    marker = read_marker(out)
    if marker is None:
        raise PublishError(f"{out} holds no site written by `infoflow build` (no {MARKER}); "
                           "run `infoflow build` first.")
    listed: dict[str, str] = marker["files"]
    bad = [rel for rel, digest in listed.items() if not _inside(rel) or not isinstance(digest, str)]
    if bad:
        raise PublishError(f"refusing to publish {out}: its {MARKER} lists {_shown([repr(b) for b in bad])}, "
                           "which is not a file inside the site. Run `infoflow build` again.")
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


def _inside(rel) -> bool:
    """A relative POSIX path to a file inside the site: no `..`, no absolute path, no `.` or
    empty parts, no backslash or NUL."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel or rel.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def strangers(out: Path) -> list[str]:
    """Files and symlinks in a built site that its build did not write (a user's .env, a key):
    what a rebuild, which replaces the folder whole, would delete."""
    marker = read_marker(out)
    listed = set(marker["files"]) | {MARKER} if marker else {MARKER}
    return [path.relative_to(out).as_posix() for path in sorted(Path(out).rglob("*"))
            if (path.is_symlink() or path.is_file()) and path.relative_to(out).as_posix() not in listed]


def read_cname(out: Path, cname: str | None, branch_cname: str | None = None) -> str | None:
    """--cname, else the branch's own CNAME (kept: it is how the branch is served), else a CNAME
    in site_src/, else the one the site already has."""
    if cname:
        return cname.strip()
    if branch_cname:
        return branch_cname
    from .site import SITE_SRC
    for path in (SITE_SRC / "CNAME", out / "CNAME"):
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
    return None


# Every publish's commit says so, so that the next one knows which of the branch's files a
# publish wrote (those it may replace) and which someone else put there (those it keeps).
TRAILER = "Published-by: infoflow"
_OURS = ["^" + TRAILER + "$", r"^Publish infoflow gallery \("]    # and commits from before the trailer


@dataclass
class BranchState:
    tip: str | None                 # the branch's commit; None: no such branch yet (or unknown)
    files: set[str] = field(default_factory=set)
    ours: set[str] = field(default_factory=set)     # the files the last infoflow publish wrote
    cname: str | None = None
    unknown: str | None = None      # why the branch could not be read (a dry run without a remote)


def _branch_state(repo: Path, remote: str, branch: str, *, dry_run: bool) -> BranchState:
    """What the pages branch holds now. A real publish fetches it into refs/remotes/; a dry run
    changes no ref (it asks ls-remote for the tip and fetches only its objects)."""
    if dry_run:
        if _git("rev-parse", "--git-dir", cwd=repo, check=False).returncode != 0:
            return BranchState(None, unknown=f"{repo} is not a git repository")
        if _git("remote", "get-url", remote, cwd=repo, check=False).returncode != 0:
            return BranchState(None, unknown=f"there is no git remote named {remote!r}")
        listed = _git("ls-remote", "--heads", remote, f"refs/heads/{branch}", cwd=repo, check=False)
        if listed.returncode != 0:
            return BranchState(None, unknown=f"{remote} cannot be read ({listed.stderr.strip()[:200]})")
        tip = listed.stdout.split()[0] if listed.stdout.strip() else None
        if tip and _git("fetch", "--quiet", "--no-write-fetch-head", "--refmap=", remote, f"refs/heads/{branch}",
                        cwd=repo, check=False).returncode != 0:
            return BranchState(None, unknown=f"{remote}/{branch} could not be fetched")
    else:
        _git("fetch", "--quiet", remote, f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}",
             cwd=repo, check=False)   # a first publish has no branch yet
        tip = _git("rev-parse", "--verify", "--quiet", f"refs/remotes/{remote}/{branch}",
                   cwd=repo, check=False).stdout.strip() or None
    if tip is None:
        return BranchState(None)
    greps = [a for g in _OURS for a in ("--grep", g)]
    last = _git("log", "-1", "--format=%H", "--extended-regexp", *greps, tip, cwd=repo).stdout.strip()
    shown = _git("show", f"{tip}:CNAME", cwd=repo, check=False)
    return BranchState(tip, _tree_files(repo, tip), _tree_files(repo, last) if last else set(),
                       shown.stdout.strip() or None if shown.returncode == 0 else None)


def _tree_files(repo: Path, commit: str) -> set[str]:
    listed = _git("ls-tree", "-r", "-z", "--name-only", commit, cwd=repo).stdout
    return {name for name in listed.split("\0") if name}


def _removals(state: BranchState, pushed: set[str], force: bool) -> tuple[list[str], str]:
    """(the branch's files the push would remove, a line saying so), refusing to remove files the
    last publish did not write unless `force`."""
    removed = sorted(state.files - pushed)
    foreign = [f for f in removed if f not in state.ours]
    if not removed:
        return removed, ""
    line = f"; it removes {len(removed)} files from the branch: {_shown(removed)}"
    if foreign and not force:
        raise PublishError(f"refusing to publish: the push would remove {_shown(foreign)} from the pages "
                           "branch, which the last `infoflow publish` did not write. Add them to the site "
                           "(site_src/), or pass --force to remove them.")
    return removed, line


def _shown(paths: list[str], limit: int = 20) -> str:
    return ", ".join(paths[:limit]) + (f", and {len(paths) - limit} more" if len(paths) > limit else "")


def publish(out: Path, *, remote: str = "origin", branch: str = "gh-pages", message: str | None = None,
            cname: str | None = None, dry_run: bool = False, repo: Path | None = None,
            force: bool = False) -> PublishResult:
    out = resolve_out(Path(out)).resolve()
    repo = Path(repo or Path.cwd()).resolve()
    paths = site_files(out)
    if not dry_run:
        if _git("rev-parse", "--git-dir", cwd=repo, check=False).returncode != 0:
            raise PublishError(f"{repo} is not a git repository; run publish inside your clone.")
        if _git("remote", "get-url", remote, cwd=repo, check=False).returncode != 0:
            raise PublishError(f"no git remote named {remote!r}; add one or pass --remote.")
    state = _branch_state(repo, remote, branch, dry_run=dry_run)
    cname = read_cname(out, cname, state.cname)
    pushed = set(paths) | {".nojekyll"} | ({"CNAME"} if cname else set())
    message = (message or f"Publish infoflow gallery ({len(paths)} files)") + f"\n\n{TRAILER}"
    if dry_run:
        try:
            removed, line = _removals(state, pushed, force)
        except PublishError as e:
            removed, line = sorted(state.files - pushed), f"; publish would stop: {e}"
        if state.unknown:
            line = f"; what it would remove from the branch is not known: {state.unknown}"
        result = PublishResult(False, None, len(paths), f"dry run: would push {len(paths)} files from {out} "
                               f"to {remote}/{branch}" + (f" with CNAME {cname}" if cname else "") + line, paths)
        result.removed = removed
        return result
    removed, line = _removals(state, pushed, force)
    before = state.tip

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
    result = PublishResult(True, after, len(paths), f"pushed {len(paths)} files to {remote}/{branch} "
                           f"({after[:10]})" + line, paths)
    result.removed = removed
    return result


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
