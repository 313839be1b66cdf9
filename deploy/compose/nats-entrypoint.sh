#!/bin/sh
# Entrypoint of the compose stack's NATS nodes: exports the servers'
# environment from the Docker secret nats-server-env (NAME=value lines as
# deploy/compose/gensecrets writes them; each value is taken literally, so
# the "$" of a bcrypt hash is not expanded), then runs nats-server with
# the arguments given (-c /etc/nats/nN.conf).
set -eu
while IFS= read -r line || [ -n "$line" ]; do
	case "$line" in
	'' | '#'*) continue ;;
	esac
	export "$line"
done </run/secrets/nats-server-env
exec nats-server "$@"
