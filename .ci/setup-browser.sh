#!/usr/bin/env bash
# Headless Chromium for the test of the stress harness's VM tab (tests/stress/test_webui_browser.py):
# Debian's package, installed if `chromium` is missing (apt-get; through sudo when not root).
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null
}
chromium --version
