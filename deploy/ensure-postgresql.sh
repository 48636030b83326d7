#!/usr/bin/env bash
# Make sure a PostgreSQL server can be started locally for the test suite, which runs the
# integration tests on it as well as on SQLite. Installs Debian's postgresql when missing,
# without letting the package start a system-wide server: the tests run their own, as a
# child, in a throwaway directory (src/biox/dev/postgres.py).
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" > /dev/null; then
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  cat >&2 <<'MSG'
biox: PostgreSQL is not installed and this user cannot install it.
  Install Debian's package once as root:
      sudo apt-get update && sudo apt-get install -y postgresql
      sudo systemctl disable --now postgresql   # the tests start their own server
MSG
  exit 1
fi

echo "biox: installing Debian's postgresql (one time)..."
bash "$(dirname "$0")/apt-install.sh" postgresql
