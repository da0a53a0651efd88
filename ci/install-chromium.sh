#!/usr/bin/env bash
# Debian's chromium, for the browser test of the channel's UI form (tests/services/channel/test_browser.py).
# Idempotent: does nothing when chromium is already installed; without root (or apt-get) it says so and
# exits 0, and the browser test then skips with that reason.
set -euo pipefail
for bin in chromium chromium-browser; do
  if command -v "$bin" >/dev/null 2>&1; then
    echo "chromium present: $(command -v "$bin")"
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: no apt-get here; install chromium yourself to run the browser test" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install-chromium: not root and no passwordless sudo; install chromium yourself to run the browser test" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium
command -v chromium
