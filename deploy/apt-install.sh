#!/usr/bin/env bash
# Install Debian packages (as root) without letting their maintainer scripts start a
# system-wide service: biox starts its own broker and database, as children, in
# throwaway directories. Used by ensure-rabbitmq.sh and ensure-postgresql.sh.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
created_policy=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[[ $created_policy = 1 ]] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
for package in "$@"; do
  echo "biox: $package $(dpkg-query -W -f='${Version}' "$package") installed."
done
