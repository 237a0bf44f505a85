"""The site folder: who may replace it, how it is swapped, and the list of files the build wrote.

Guarantees (docs/reliability.md):
- A build replaces `out` only when it is missing, empty, or a site an infoflow build wrote (it
  holds MARKER). Anything else is refused before a byte is written.
- One build at a time per folder: a lock file beside it; a second build waits, saying so.
- The new site is assembled in a staging folder beside `out`, then swapped in. On Linux the
  swap is one atomic exchange (renameat2 RENAME_EXCHANGE): at every instant `out` is a complete
  site, old or new. Where the exchange is not available the swap is two renames; a kill between
  them leaves the old site complete under `.<out>.old-*`, and the next build puts it back first.
- Those `.<out>.staging-*` and `.<out>.old-*` folders are named in a ledger beside `out` before
  they are made; only folders the ledger names are ever removed or put back.
- MARKER lists every file the build wrote with its sha256; `publish` pushes exactly those.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
import sys
import warnings
from pathlib import Path

from .files import read_regular

MARKER = ".infoflow-site.json"
LOCK_WAIT_SECONDS = 600


class SiteDirError(Exception):
    """The site folder cannot be used; the message says why and what to do."""


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- who may replace it


def read_marker(out: Path) -> dict | None:
    """The file list a build wrote into `out`, or None when `out` is not such a site."""
    try:
        marker = json.loads(read_regular(Path(out) / MARKER).decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(marker, dict) and marker.get("generator") == "infoflow"
            and isinstance(marker.get("files"), dict)):
        return None
    return marker


def is_site(folder: Path) -> bool:
    """Whether `folder` is a site an infoflow build wrote (and its next build replaces whole)."""
    return folder.is_dir() and (read_marker(folder) is not None or _legacy_site(folder))


def check_replaceable(out: Path) -> None:
    """Raise SiteDirError unless a build may replace `out` whole."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise SiteDirError(f"--out {out}: it is a file, not a folder. Choose another --out.")
    with os.scandir(out) as it:
        if next(it, None) is None:
            return                                        # empty
    if read_marker(out) is not None or _legacy_site(out):
        return
    raise SiteDirError(
        f"--out {out}: this folder is not empty and was not written by `infoflow build` (it has no "
        f"{MARKER}); building there would delete its files. Choose another --out, or empty or "
        "remove the folder yourself.")


def _legacy_site(out: Path) -> bool:
    """A site written by infoflow 0.1 before the marker existed: its manifest has our three keys."""
    try:
        manifest = json.loads(read_regular(out / "data" / "manifest.json").decode("utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and set(manifest) == {"schema", "site", "prompts"}
            and (out / "index.html").is_file())


def resolve_out(out: Path) -> Path:
    """A symlinked --out is built into its target, so the link stays a link."""
    out = Path(out)
    return Path(os.path.realpath(out)) if out.is_symlink() else out


# ----------------------------------------------------------------------------- lock


@contextlib.contextmanager
def locked(out: Path, log=print):
    """Hold the lock of `out` (a file beside it); wait for another build with a message."""
    from filelock import FileLock, Timeout

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out.parent / f".{out.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"infoflow: another build is writing {out}; waiting for it to finish (up to "
            f"{LOCK_WAIT_SECONDS // 60} min)...")
        try:
            lock.acquire(timeout=LOCK_WAIT_SECONDS)
        except Timeout:
            raise SiteDirError(f"another build has held {out} for {LOCK_WAIT_SECONDS // 60} minutes; "
                               "let it finish, or stop it, then build again.") from None
    try:
        yield
    finally:
        lock.release()


# ----------------------------------------------------------------------------- staging and swap


# Which `.<out>.staging-*` and `.<out>.old-*` folders are ours: a ledger beside `out` names each
# one before it is made and until it is gone. Only those are ever removed or put back; anything
# else of that name (a user's `.site.older-backup`) is named in a warning and left alone. A ledger
# and not a file inside: after the atomic exchange the staging name holds the old site, and a
# removal that stops half-way may have taken a marker inside with it.


def _ledger_path(out: Path) -> Path:
    return out.parent / f".{out.name}.infoflow-scratch.json"


def _ledger(out: Path) -> list[str]:
    try:
        names = json.loads(read_regular(_ledger_path(out)).decode("utf-8"))
    except (OSError, ValueError):
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _record(out: Path, name: str, made: bool) -> None:
    """Add `name` to the ledger (before the folder is made) or drop it (once it is gone)."""
    from .files import atomic_write

    names = [n for n in _ledger(out) if n != name] + ([name] if made else [])
    if names:
        atomic_write(_ledger_path(out), json.dumps(names, indent=1))
    else:
        _ledger_path(out).unlink(missing_ok=True)


def _scratch(out: Path, kind: str) -> Path:
    """A new name beside `out` for a staging or old folder, recorded in the ledger."""
    while True:
        path = out.parent / f".{out.name}.{kind}-{secrets.token_hex(4)}"
        if not path.exists() and not path.is_symlink():
            break
    _record(out, path.name, True)
    return path


def _leftovers(out: Path) -> list[Path]:
    return sorted(p for pattern in (f".{out.name}.staging-*", f".{out.name}.old*")
                  for p in out.parent.glob(pattern))


def recover(out: Path, warn=warnings.warn) -> None:
    """Before building (lock held): put back a site a crash left between the two renames of a
    swap, then remove the staging and old folders earlier builds made and left, naming any that
    cannot be removed, and any of such a name that no build made (never touched)."""
    out = Path(out)
    ours = set(_ledger(out))
    leftovers = _leftovers(out)
    for stranger in (p for p in leftovers if p.name not in ours):
        warn(f"leaving {stranger} alone: its name is like a leftover of a build of {out}, but no "
             "infoflow build made it. Remove or rename it yourself if you do not need it.")
    mine = [p for p in leftovers if p.name in ours]
    if not out.exists():
        olds = [p for p in mine if ".old-" in p.name and read_marker(p) is not None]
        if olds:
            os.replace(olds[-1], out)
            _record(out, olds[-1].name, False)
            mine.remove(olds[-1])
    for stale in mine:
        _remove(stale, warn, out)
    for gone in ours - {p.name for p in leftovers}:   # removed, but the ledger was not updated
        _record(out, gone, False)


def new_staging(out: Path) -> Path:
    """An empty folder beside `out`, with the permissions a new folder gets under the umask."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _scratch(out, "staging")
    staging.mkdir(mode=0o777)                   # the umask applies: a web server must read it
    return staging


def write_marker(staging: Path, identity: dict) -> dict:
    """List every file under `staging` with its sha256 (symlinks are refused: we never make any)."""
    files = {}
    for path in sorted(staging.rglob("*")):
        if path.is_symlink():
            raise SiteDirError(f"the build made a symlink {path.relative_to(staging)}; refusing it")
        if path.is_file():
            files[path.relative_to(staging).as_posix()] = sha256_file(path)
    from . import __version__
    marker = {"generator": "infoflow", "version": __version__, "config": identity, "files": files}
    (staging / MARKER).write_text(json.dumps(marker, indent=1, ensure_ascii=False), encoding="utf-8")
    return marker


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def swap(staging: Path, out: Path, warn=warnings.warn) -> None:
    """Put the finished `staging` in place of `out`, then remove the old site."""
    if out.exists() and _exchange(staging, out):
        _remove(staging, warn, out)             # staging now holds the old site
        return
    old = None
    if out.exists():
        old = _scratch(out, "old")
        os.replace(out, old)                    # a kill here: recover() puts `old` back
    try:
        os.replace(staging, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
            _record(out, old.name, False)
        raise
    _record(out, staging.name, False)           # its name is gone: `out` holds it now
    if old is not None:
        _remove(old, warn, out)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two folders (Linux renameat2); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def discard(staging: Path, out: Path) -> None:
    """Remove a staging folder a failed build leaves, and its ledger entry."""
    shutil.rmtree(staging, ignore_errors=True)
    if not staging.exists():
        _record(out, staging.name, False)


def _remove(path: Path, warn, out: Path) -> None:
    """Remove a folder the ledger of `out` names; it stays named there until it is gone."""
    failed = []
    shutil.rmtree(path, onerror=lambda fn, p, info: failed.append((p, info[1])))
    if not path.exists():
        _record(out, path.name, False)
    if failed:
        p, exc = failed[0]
        warn(f"could not remove {path} ({exc.__class__.__name__}: {exc}, e.g. at {p}); the site is "
             f"fine, remove that folder by hand (chmod -R u+w {path} && rm -rf {path}).")
