#!/usr/bin/env bash
# Creates .venv and installs everything the project needs. Idempotent: a second run only checks.
# torch is installed first and pinned, so no other package can pull a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The browser test (tests/test_browser.py) drives Debian's Chromium: Playwright cannot download browsers here.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (apt-get) for the browser test"
    # Another apt-get (an image's own set-up, unattended upgrades) may hold the dpkg lock: wait for it, retry.
    for try in 1 2 3 4 5; do
      if apt-get -o DPkg::Lock::Timeout=120 update -qq && DEBIAN_FRONTEND=noninteractive apt-get \
          -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends chromium >/dev/null; then
        break
      fi
      [ "$try" = 5 ] && { echo "setup: apt-get failed 5 times; the browser test will be skipped" >&2; break; }
      echo "setup: apt-get failed (try $try of 5); retrying in 20 s" >&2
      sleep 20
    done
  else
    echo "setup: chromium is missing and apt-get needs root; the browser test will be skipped" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.installed-$(cat requirements.txt requirements-nodeps.txt requirements-dev.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  pip install -q --disable-pip-version-check "torch==2.13.0"
  pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
  pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
  rm -f .venv/.installed-*
  touch "$stamp"
fi
