#!/usr/bin/env bash
# Create the virtualenv .venv in the repo root and install dlm into it (CPU torch 2.13.0 pinned,
# plus the test tools and the eval extras: Parquet reading, lm-evaluation-harness).
# Idempotent: a second run with an unchanged pyproject.toml returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3 python; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "setup: dlm needs Python >= 3.11 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi

stamp=.venv/.dlm-installed
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/dlm ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_install() {
  # pip's "Location ... is ignored" warnings about absent local indexes are noise; keep its status
  set +o pipefail
  .venv/bin/python -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
  local status=${PIPESTATUS[0]}
  set -o pipefail
  [ "$status" -eq 0 ] || { echo "setup: pip install $* failed" >&2; exit 1; }
}
echo "setup: installing torch 2.13.0 (CPU) and dlm into .venv ..." >&2
pip_install "torch==2.13.0"
pip_install -e ".[test,eval,lm-eval]"
.venv/bin/python -c "import torch, dlm, pytest; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
  || { echo "setup: install failed" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: done (.venv/bin/dlm)" >&2
