#!/usr/bin/env bash
# Make sure Debian's Chromium is here: the report page is checked in a real headless
# browser (tests/integration/test_report_page.py) and its screenshot kept in docs/.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  cat >&2 <<'MSG'
biox: Chromium is not installed and this user cannot install it. Once, as root:
    sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium
MSG
  exit 1
fi
echo "biox: installing Debian's chromium (one time, for the report page check)..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "biox: chromium $(dpkg-query -W -f='${Version}' chromium) installed."
