"""Issue 10: the pipeline never loses a user's file, never publishes one the build did not
write, survives crashes and concurrent builds, and passes one config from build to publish."""
import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

from infoflow import sitedir
from infoflow.build import build, read_cached
from infoflow.cli import main
from infoflow.config import ConfigError, SiteConfig
from infoflow.prompts import PromptError, load_prompts
from infoflow.publish import PublishError, publish

from .conftest import sharing_cache

ONE_PROMPT = '[[prompt]]\nid = "capital"\ntitle = "Factual recall"\ntext = "The capital of France is"\n'


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def copy_site(gallery, tmp_path) -> Path:
    """A site of our own, built from the gallery's cached results (no model, no live weights)."""
    from dataclasses import replace
    site = tmp_path / "site"
    build(replace(gallery["cfg"], out=site, live=False), progress=False)
    return site


def cli(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


# ----------------------------------------------------------------------------- never delete a user's folder


def test_build_refuses_a_folder_it_did_not_write(gallery, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("my notes")
    result = cli("build", "--prompts", gallery["prompts"], "--out", docs, "--cache-dir", gallery["cfg"].cache)
    assert result.exit_code != 0 and "not written by `infoflow build`" in result.output
    assert str(docs) in result.output and "Traceback" not in result.output
    assert (docs / "guide.md").read_text() == "my notes" and len(list(docs.iterdir())) == 1


@pytest.mark.parametrize("where", ["cwd", "parent", "prompts-folder", "home"])
def test_build_refuses_places_that_hold_the_project(where, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "prompts").mkdir(parents=True)
    (project / "prompts" / "gallery.toml").write_text(ONE_PROMPT)
    monkeypatch.chdir(project)
    out = {"cwd": ".", "parent": "..", "prompts-folder": "prompts", "home": str(Path.home())}[where]
    with pytest.raises(ConfigError, match="refusing to build there"):
        SiteConfig(prompts=Path("prompts/gallery.toml"), out=Path(out)).check()
    result = cli("build", "--out", out)
    assert result.exit_code != 0 and "refusing to build there" in result.output
    assert (project / "prompts" / "gallery.toml").read_text() == ONE_PROMPT


def test_build_replaces_empty_and_own_folders_and_follows_a_symlinked_out(gallery, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = gallery["cfg"]
    build(SiteConfig(prompts=cfg.prompts, out=empty, cache=cfg.cache), progress=False)
    assert (empty / "index.html").is_file() and (empty / sitedir.MARKER).is_file()
    target = tmp_path / "real-site"
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    for _ in range(2):                           # twice: the second build replaces its own site
        build(SiteConfig(prompts=cfg.prompts, out=link, cache=cfg.cache), progress=False)
        assert link.is_symlink() and (target / "index.html").is_file()


# ----------------------------------------------------------------------------- publish an allow-list

SECRETS = [".env.local", ".env.production", ".git/config", "id_ed25519", ".npmrc", ".netrc", "server.pem",
           "credentials.json", "MODEL.SAFETENSORS", "weights.ckpt", "model.onnx", "data/stray.bin"]


def test_publish_refuses_every_file_the_build_did_not_write(gallery, tmp_path):
    site = copy_site(gallery, tmp_path)
    for rel in SECRETS:
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text("secret")
    outside = tmp_path / "private.txt"
    outside.write_text("private")
    (site / "notes.txt").symlink_to(outside)
    with pytest.raises(PublishError) as err:
        publish(site, repo=tmp_path, dry_run=True)
    for rel in SECRETS + ["notes.txt (a symlink)"]:
        assert rel in str(err.value), rel
    # a file the build wrote, changed afterwards, is refused too
    site2 = copy_site(gallery, tmp_path / "two")
    (site2 / "index.html").write_text("<p>edited</p>")
    with pytest.raises(PublishError, match=r"index\.html \(changed since the build\)"):
        publish(site2, repo=tmp_path, dry_run=True)


def test_publish_dry_run_changes_nothing_and_lists_files(gallery, tmp_path):
    cfg = gallery["cfg"]
    site = copy_site(gallery, tmp_path)
    cache = Path(cfg.cache)
    before_site, before_cache = snapshot(site), snapshot(cache / "results")
    args = ["publish", "--dry-run", "--no-live", "--prompts", cfg.prompts, "--out", site, "--cache-dir", cfg.cache]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "would not rebuild" in result.output and "  index.html" in result.output
    assert "  p/capital.html" in result.output and sitedir.MARKER not in result.output
    stale = tmp_path / "stale.toml"
    stale.write_text(cfg.prompts.read_text().replace("Factual recall", "Another title"))
    result = cli("publish", "--dry-run", "--no-live", "--prompts", stale, "--out", site, "--cache-dir", cfg.cache)
    assert result.exit_code == 0 and "would rebuild first" in result.output, result.output
    assert snapshot(site) == before_site and snapshot(cache / "results") == before_cache


# ----------------------------------------------------------------------------- cache entries


def test_cache_entry_copied_over_another_is_refused(gallery, tmp_path):
    from infoflow.build import _entry_path
    from infoflow.prompts import load_prompts as lp
    cfg = gallery["cfg"]
    cache = tmp_path / "cache"
    shutil.copytree(Path(cfg.cache) / "results", cache / "results")
    sharing_cache(cache, cfg.cache)
    local = SiteConfig(prompts=cfg.prompts, out=tmp_path / "site", cache=str(cache))
    from infoflow.model import fingerprint
    fp = fingerprint(None, cfg.cache)
    capital, ioi = (_entry_path(local, p, fp) for p in lp(cfg.prompts)[:2])
    shutil.copyfile(ioi, capital)                       # ioi's bytes under capital's key
    with pytest.warns(UserWarning, match="belongs to key"):
        assert read_cached(capital) is None
    # checksum right, body malformed: recomputed with a warning, never a traceback
    blob = msgpack.packb([ioi.stem, ["not", "a", "document"]])
    import hashlib
    ioi.write_bytes(blob + hashlib.sha256(blob).digest())
    with pytest.warns(UserWarning, match="malformed document"):
        assert read_cached(ioi) is None
    with pytest.warns(UserWarning):
        summary = build(local, progress=False)
    assert sorted(summary.computed) == ["capital", "ioi"]
    page = (tmp_path / "site" / "data").glob("capital.*.msgpack")
    assert msgpack.unpackb(next(page).read_bytes())["tokens"][-1] == " is"


# ----------------------------------------------------------------------------- permissions


def test_written_files_follow_the_umask_and_add_keeps_the_mode(gallery, tmp_path):
    cfg = gallery["cfg"]
    old = os.umask(0o022)
    try:
        build(SiteConfig(prompts=cfg.prompts, out=tmp_path / "site", cache=cfg.cache), progress=False)
        prompts = tmp_path / "prompts.toml"
        prompts.write_text(ONE_PROMPT)
        os.chmod(prompts, 0o640)
        assert cli("add", "Two plus two is", "--prompts", prompts).exit_code == 0
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    site = tmp_path / "site"
    assert mode(site) == 0o755 and mode(site / "data") == 0o755
    assert mode(site / "data" / "manifest.json") == 0o644
    assert all(mode(p) == 0o644 for p in (site / "data").glob("*.msgpack"))
    assert mode(prompts) == 0o640
    added = load_prompts(prompts)[-1]
    assert added.title == "Two plus two is" and added.id == "two-plus-two-is"    # title defaults to text


# ----------------------------------------------------------------------------- crashes and concurrency

KILL_AT_SECOND_RESULT = """
import os, signal, sys
import infoflow.build as b
calls = []
real = b.write_cached
def write_then_die(path, body):
    real(path, body)
    calls.append(path)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
b.write_cached = write_then_die
from infoflow.cli import main
sys.exit(main())
"""

KILL_BETWEEN_RENAMES = """
import os, signal, sys
import infoflow.sitedir as s
s._exchange = lambda a, b: False          # the two-rename swap, as on systems without renameat2
real = os.replace
def replace_then_die(a, b):
    real(a, b)
    if ".old-" in str(b):
        os.kill(os.getpid(), signal.SIGKILL)
s.os.replace = replace_then_die
from infoflow.cli import main
sys.exit(main())
"""


def run_patched(script, *args, cache):
    env = dict(os.environ, INFOFLOW_CACHE=str(cache))
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


def fresh_cache(gallery, tmp_path) -> Path:
    return sharing_cache(tmp_path / "cache", gallery["cfg"].cache)


def test_build_killed_at_a_known_step_keeps_site_and_resumes(gallery, tiny_model_folder, tmp_path):
    site = copy_site(gallery, tmp_path)
    before = snapshot(site)
    cache = fresh_cache(gallery, tmp_path)
    prompts = tmp_path / "prompts.toml"
    prompts.write_text("".join(f'[[prompt]]\nid = "p{i}"\ntitle = "P{i}"\ntext = "Counting {i}: one, two"\n\n'
                               for i in range(4)))
    # a tiny model: what is tested is the build's bookkeeping, and four real-model prompts with
    # their graphs and ablation checks would cost a minute of the suite's time
    proc = run_patched(KILL_AT_SECOND_RESULT, "build", "--prompts", prompts, "--out", site,
                       "--model", tiny_model_folder, "--no-live", cache=cache)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list((cache / "results").glob("*.msgpack"))) == 2
    assert snapshot(site) == before                                 # the old site is intact
    summary = build(SiteConfig(prompts=prompts, out=site, cache=str(cache), model=str(tiny_model_folder),
                               live=False), progress=False)
    assert len(summary.reused) == 2 and len(summary.computed) == 2
    assert "P3" in (site / "index.html").read_text()


def test_kill_between_the_two_renames_is_recovered(gallery, tmp_path):
    site = copy_site(gallery, tmp_path)
    cfg = gallery["cfg"]
    before = (site / "index.html").read_text()
    proc = run_patched(KILL_BETWEEN_RENAMES, "build", "--prompts", cfg.prompts, "--out", site,
                       cache=cfg.cache)
    assert proc.returncode == -signal.SIGKILL and not site.exists()
    olds = list(tmp_path.glob(".site.old-*"))
    assert len(olds) == 1 and (olds[0] / "index.html").read_text() == before   # complete, beside it
    sitedir.recover(site)                                           # what the next build does first
    assert (site / "index.html").read_text() == before
    assert not list(tmp_path.glob(".site.old*")) and not list(tmp_path.glob(".site.staging*"))
    build(SiteConfig(prompts=cfg.prompts, out=site, cache=cfg.cache), progress=False)
    assert (site / "index.html").is_file()


def test_swap_exchanges_atomically(gallery, tmp_path):
    """With renameat2 the folder is never missing: the old site lands in the staging name."""
    site = copy_site(gallery, tmp_path)
    staging = sitedir.new_staging(site)
    (staging / "index.html").write_text("new")
    seen = []
    real = sitedir._remove
    sitedir_remove = lambda path, *a: (seen.append((path, (site / "index.html").read_text())), real(path, *a))
    try:
        sitedir._remove = sitedir_remove
        sitedir.swap(staging, site)
    finally:
        sitedir._remove = real
    assert seen and seen[0][1] == "new" and not staging.exists()


def test_second_build_waits_for_the_first(gallery, tmp_path):
    cfg = gallery["cfg"]
    out = tmp_path / "site"
    release = threading.Event()

    def hold():
        with sitedir.locked(out, log=lambda m: None):
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.2)
    proc = subprocess.Popen([sys.executable, "-m", "infoflow.cli", "build", "--prompts", str(cfg.prompts),
                             "--out", str(out), "--cache-dir", cfg.cache], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first = proc.stdout.readline()
    assert "another build is writing" in first and proc.poll() is None
    release.set()
    holder.join()
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, rest
    assert (out / "index.html").is_file()


def test_undeletable_old_site_is_reported_not_fatal(gallery, tmp_path, monkeypatch):
    """A read-only old site cannot be removed after the swap: say so, and keep building."""
    cfg = gallery["cfg"]
    site = copy_site(gallery, tmp_path)
    real_rmtree = shutil.rmtree

    def failing_rmtree(path, onerror=None, **kw):
        if onerror is None:                                 # not the old site's removal
            return real_rmtree(path, **kw)
        onerror(os.rmdir, str(Path(path) / "data"), (PermissionError, PermissionError(13, "Permission denied"), None))

    monkeypatch.setattr(sitedir.shutil, "rmtree", failing_rmtree)
    local = SiteConfig(prompts=cfg.prompts, out=site, cache=cfg.cache)
    for _ in range(2):
        with pytest.warns(UserWarning, match="could not remove .*remove that folder by hand"):
            build(local, progress=False)
        assert (site / "index.html").is_file()
    assert len(list(tmp_path.glob(".site.staging-*"))) == 2       # the two old sites, left and named
    monkeypatch.setattr(sitedir.shutil, "rmtree", real_rmtree)
    build(local, progress=False)
    assert not list(tmp_path.glob(".site.staging-*"))              # cleaned up once removable


@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EACCES])
def test_full_disk_or_read_only_parent_gets_one_line(gallery, tmp_path, monkeypatch, failure):
    cfg = gallery["cfg"]
    site = copy_site(gallery, tmp_path)
    before = snapshot(site)
    import infoflow.build as b

    def fail(*a, **k):
        raise OSError(failure, os.strerror(failure), str(tmp_path / "x"))

    monkeypatch.setattr(b, "render_site" if failure == errno.ENOSPC else "new_staging", fail)
    result = cli("build", "--prompts", cfg.prompts, "--out", site, "--cache-dir", cfg.cache)
    assert result.exit_code == 1 and os.strerror(failure) in result.output
    assert "previous site is untouched" in result.output and "Traceback" not in result.output
    assert snapshot(site) == before and not list(tmp_path.glob(".site.staging-*"))


# ----------------------------------------------------------------------------- prompts files

@pytest.mark.parametrize("content, pattern", [
    (b"", "has no prompts"),
    (b"# only a comment\n\n# and another\n", "has no prompts"),
    (b'[[prompt]]\nid = "a"\ntitle = "caf\xe9"\ntext = "x"\n', r"not UTF-8 text \(byte 0xe9 on line 3"),
])
def test_empty_comment_only_and_non_utf8_prompt_files(content, pattern, tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(content)
    with pytest.raises(PromptError, match=pattern):
        load_prompts(path)
    result = cli("build", "--prompts", path, "--out", tmp_path / "site")
    assert result.exit_code == 1 and str(path) in result.output and "Traceback" not in result.output
    assert not (tmp_path / "site").exists()


def test_bom_accepted_and_spaced_headers_get_their_lines(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b"\xef\xbb\xbf# gallery\n[[ prompt ]]\nid = \"a\"\ntitle = \"A\"\ntext = \"x\"\n\n"
                     b"[[prompt]]  # second\nid = \"a\"\ntitle = \"B\"\ntext = \"y\"\n")
    with pytest.raises(PromptError, match=r"entry 2 \(line 7\): duplicate id"):
        load_prompts(path)
    path.write_bytes(path.read_bytes().replace(b'id = "a"\ntitle = "B"', b'id = "b"\ntitle = "B"'))
    assert [(p.id, p.line) for p in load_prompts(path)] == [("a", 2), ("b", 7)]


# ----------------------------------------------------------------------------- serve


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_only_for_the_sites_own_files(gallery, tmp_path):
    from infoflow.serve import make_server
    site = copy_site(gallery, tmp_path)
    (tmp_path / "secret.txt").write_text("outside")
    (site / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (site / ".env").write_text("TOKEN=1")
    server = make_server(site, _free_port())
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def status(path):
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        assert server.server_address[0] == "127.0.0.1"
        assert status("/index.html") == 200 and status("/p/capital.html") == 200
        assert status("/leak.txt") == 404 and status("/.env") == 404
        assert status(f"/{sitedir.MARKER}") == 404 and status("/data/") == 404
        assert status("/index.html%00.png") == 400
    finally:
        server.shutdown()
        server.server_close()


def test_serve_on_a_port_in_use_suggests_another(gallery):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = cli("serve", "--no-build", "--out", gallery["site"], "--port", port)
    assert result.exit_code == 1 and f"port {port} is in use" in result.output and "--port" in result.output


# ----------------------------------------------------------------------------- one config


def test_publish_after_build_with_a_model_publishes_that_model(gallery, tiny_model_folder, tmp_path):
    from infoflow.model import fingerprint
    cfg = gallery["cfg"]
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    subprocess.run(["git", "init", "--bare", "-q", str(bare)], check=True)
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run(["git", "remote", "add", "origin", str(bare)], cwd=work, check=True)
    prompts, site = work / "prompts.toml", work / "site"
    prompts.write_text(ONE_PROMPT)
    common = ["--prompts", prompts, "--out", site, "--cache-dir", cfg.cache]
    os.chdir(work)
    try:
        built = cli("build", *common, "--model", tiny_model_folder)
        assert built.exit_code == 0, built.output
        plain = cli("publish", *common)                    # the default model would replace the site
        assert plain.exit_code == 1 and f"--model {tiny_model_folder}" in plain.output
        dry = cli("publish", *common, "--model", tiny_model_folder, "--dry-run")
        assert dry.exit_code == 0 and "would not rebuild" in dry.output, dry.output
        pushed = cli("publish", *common, "--model", tiny_model_folder)
        assert pushed.exit_code == 0 and "0 computed, 1 reused" in pushed.output, pushed.output
    finally:
        os.chdir(Path(__file__).parent.parent)
    shown = subprocess.run(["git", "show", "gh-pages:data/manifest.json"], cwd=bare, capture_output=True,
                           text=True, check=True).stdout
    assert str(tiny_model_folder) in shown and fingerprint(str(tiny_model_folder)) in shown


def test_shard_keeps_only(gallery, tmp_path):
    cfg = gallery["cfg"]
    cache = fresh_cache(gallery, tmp_path)
    shutil.copytree(Path(cfg.cache) / "results", cache / "results")
    local = SiteConfig(prompts=cfg.prompts, out=tmp_path / "unused", cache=str(cache))
    summary = build(local, only=("ioi", "hostile"), shard=(1, 2), progress=False)
    assert summary.reused == ["hostile"] and summary.computed == []


# ----------------------------------------------------------------------------- torch-free reading


def test_reading_a_data_file_imports_no_torch(gallery_site):
    data = next((gallery_site / "data").glob("capital.*.msgpack"))
    code = textwrap.dedent(f"""
        import sys, infoflow
        d = infoflow.load({str(data)!r})
        assert d.tokens[-1] == " is", d.tokens
        heavy = sorted(m for m in ("torch", "transformers", "nnsight") if m in sys.modules)
        print("heavy:", heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "heavy: []" in out


def test_sites_from_before_the_marker_are_still_replaceable(tmp_path):
    old = tmp_path / "old-site"
    (old / "data").mkdir(parents=True)
    (old / "index.html").write_text("<p>gallery</p>")
    (old / "data" / "manifest.json").write_text('{"schema": 1, "site": {}, "prompts": []}')
    sitedir.check_replaceable(old)
    (old / "data" / "manifest.json").write_text('{"schema": 1, "pages": []}')    # someone else's manifest
    with pytest.raises(sitedir.SiteDirError, match="not written by `infoflow build`"):
        sitedir.check_replaceable(old)
