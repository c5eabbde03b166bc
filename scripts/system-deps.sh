#!/usr/bin/env bash
# System packages the test suite needs and pip cannot provide, installed when missing
# (`make test` runs this first; running it again changes nothing):
#   dataset-fashion-mnist: real Fashion-MNIST for the reference-model tests (no dataset host needed)
#   chromium: the headless browser that renders the `vitx inspect` report in a test, and that the
#             Python playwright package (requirements-test.txt) drives for the explorer test
# Uses apt-get (Debian / Ubuntu), through sudo when not root. Where neither works it says which
# tests will skip and exits 0, so the suite still runs.
set -euo pipefail

dataset_dir="${VITX_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
missing=()
[ -d "$dataset_dir" ] || missing+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

skip="the tests that need ${missing[*]} will be skipped"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no apt-get here; install ${missing[*]} yourself, or $skip" >&2
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "system-deps: not root and no sudo; $skip" >&2
    exit 0
  fi
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
echo "system-deps: installing ${missing[*]} (apt-get)" >&2
"${SUDO[@]}" apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
  || { "${SUDO[@]}" apt-get update -q >/dev/null 2>&1 && "${SUDO[@]}" apt-get install -y -q "${missing[@]}" >/dev/null; } \
  || echo "system-deps: could not install ${missing[*]}; $skip" >&2
