#!/usr/bin/env bash
# Debian's Chromium for the demo-page browser test (tests/test_demo_browser.py drives it through the
# `playwright` Python package with executable_path=/usr/bin/chromium; Playwright's own browser download is
# never used). Idempotent: does nothing when /usr/bin/chromium exists. Without root (and no sudo) it only
# says so: the browser test then skips with that reason instead of failing.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "install-browser: chromium already present ($(/usr/bin/chromium --version 2>/dev/null | head -n 1 || true))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: no apt-get here; install Chromium at /usr/bin/chromium by hand" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install-browser: not root and no password-less sudo: chromium not installed" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
echo "install-browser: installed $(/usr/bin/chromium --version 2>/dev/null | head -n 1 || echo chromium)"
