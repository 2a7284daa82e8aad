#!/usr/bin/env bash
# Stop the maintenance Beat, then the worker: TERM, wait $STOP_TIMEOUT (60 s), then KILL.
# Safe to call twice. Settings: see scripts/services.sh.
exec "$(dirname "$0")/scripts/services.sh" stop "$@"
