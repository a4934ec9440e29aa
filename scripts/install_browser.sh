#!/usr/bin/env bash
# The web-UI test drives Debian's Chromium with Playwright (Playwright's own browser download cannot work here).
# Installs it when missing and we are root; otherwise says so, and the UI test skips with that reason.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian chromium for the web-UI test..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed; the web-UI test will be skipped"
else
  echo "no /usr/bin/chromium and no root to install it; the web-UI test will be skipped"
fi
exit 0
