#!/usr/bin/env bash
# Start the maintenance worker and Beat in the background (pidfiles in run/, output in logs/).
# Safe to call twice. Settings: see scripts/services.sh.
exec "$(dirname "$0")/scripts/services.sh" start "$@"
