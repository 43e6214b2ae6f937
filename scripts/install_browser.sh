#!/usr/bin/env bash
# Headless Chromium and its driver from Debian's packages, for the real-browser widget test.
# Does nothing when both are already installed; needs root (or sudo) otherwise.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "install_browser.sh: chromium and chromium-driver are missing; install them as root (apt-get install chromium chromium-driver)" >&2; exit 1; }
    SUDO=sudo
fi
echo "installing chromium and chromium-driver (Debian packages) for the browser test ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
