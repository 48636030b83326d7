#!/usr/bin/env bash
# Make sure a RabbitMQ server can be started locally, unless BIOX_AMQP_URL names one.
# Installs Debian's rabbitmq-server when missing, without letting the package start a
# system-wide broker: biox runs its own, as a child, in a throwaway directory.
set -euo pipefail

if [[ -n "${BIOX_AMQP_URL:-}" ]]; then
  echo "biox: using the broker at BIOX_AMQP_URL; no local RabbitMQ needed."
  exit 0
fi
if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  cat >&2 <<'MSG'
biox: RabbitMQ is not installed and this user cannot install it.
  Either install Debian's package once as root:
      sudo apt-get update && sudo apt-get install -y rabbitmq-server
      sudo systemctl disable --now rabbitmq-server   # biox starts its own broker
  or point biox at an existing broker:
      export BIOX_AMQP_URL=amqp://user:password@host:5672/vhost
MSG
  exit 1
fi

echo "biox: installing Debian's rabbitmq-server (one time)..."
bash "$(dirname "$0")/../apt-install.sh" rabbitmq-server
