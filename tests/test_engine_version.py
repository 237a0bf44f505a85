"""ENGINE_VERSION is derived, not bumped by hand: a hash of the modules that decide a result's
numbers and bytes (infoflow/__init__.py ENGINE_SOURCES)."""
import hashlib
import subprocess
import sys
from pathlib import Path

import infoflow

PACKAGE = Path(infoflow.__file__).parent


def test_engine_version_is_the_hash_of_the_engine_sources():
    h = hashlib.sha256()
    for name in infoflow.ENGINE_SOURCES:
        h.update(name.encode() + b"\0" + (PACKAGE / name).read_bytes() + b"\0")
    assert infoflow.ENGINE_VERSION == h.hexdigest()[:12]


def test_every_module_the_engine_imports_is_hashed_or_declared_not_numeric():
    # in a fresh interpreter: what importing the numeric pipeline loads of infoflow
    code = ("import sys, importlib\n"
            "for m in ('decompose', 'datafile', 'gallery_graphs', 'paths', 'ablate', 'graphfile', 'logits', 'engine'):\n"
            "    importlib.import_module('infoflow.' + m)\n"
            "print(' '.join(sorted(k.split('.')[1] + '.py' for k in sys.modules if k.startswith('infoflow.'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent).stdout.split()
    unlisted = set(loaded) - set(infoflow.ENGINE_SOURCES) - set(infoflow.NOT_NUMERIC)
    assert not unlisted, f"add {sorted(unlisted)} to infoflow.ENGINE_SOURCES (or NOT_NUMERIC)"
    assert all((PACKAGE / n).is_file() for n in infoflow.ENGINE_SOURCES + infoflow.NOT_NUMERIC)


def test_a_changed_source_changes_the_version(tmp_path):
    # a copy of the package with one character of engine.py changed hashes differently
    import shutil
    copy = tmp_path / "infoflow"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    src = copy / "engine.py"
    src.write_text(src.read_text(encoding="utf-8") + "\n# changed\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", "import infoflow; print(infoflow.ENGINE_VERSION)"],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert out and out != infoflow.ENGINE_VERSION
