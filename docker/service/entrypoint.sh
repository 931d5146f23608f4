#!/bin/sh
# Start-up of the service container: prompts first (incremental, so a restart costs well
# under a second), then the schema, then the command (default: callcenter serve).
set -eu
callcenter prompts build --quiet
callcenter db upgrade
exec "$@"
