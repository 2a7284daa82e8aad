#!/usr/bin/env bash
# The maintenance worker and Beat on a host without Docker: start | stop | status | restart.
# ./start_all_services.sh and ./stop_all.sh at the top level call this.
#
# Each process runs in its own session, writes its own pidfile (celery --pidfile) under $RUN_DIR,
# and its console output to $LOG_DIR/<name>.out; the structured logs go where the config says
# (logs/task_cleanup.log, logs/celery_worker.log, logs/app.log). Stop sends TERM (Celery's warm
# shutdown: a running task finishes, or stops at its soft time limit), waits $STOP_TIMEOUT
# seconds, then KILLs what is left of that process's session. Every command is safe to repeat.
#
# Environment (defaults): MAINTENANCE_CONFIG (config/maintenance.toml), RUN_DIR (run),
# LOG_DIR (logs), CELERY (.venv/bin/celery, else celery on PATH), WORKER_NAME (maintenance@%h),
# WORKER_CONCURRENCY (1), MAINTENANCE_QUEUE (maintenance), LOGLEVEL (INFO), STOP_TIMEOUT (60).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

MAINTENANCE_CONFIG="$(absolute "${MAINTENANCE_CONFIG:-$ROOT/config/maintenance.toml}")"
RUN_DIR="$(absolute "${RUN_DIR:-$ROOT/run}")"
LOG_DIR="$(absolute "${LOG_DIR:-$ROOT/logs}")"
if [ -z "${CELERY:-}" ]; then
  if [ -x "$ROOT/.venv/bin/celery" ]; then CELERY="$ROOT/.venv/bin/celery"; else CELERY=celery; fi
fi
WORKER_NAME="${WORKER_NAME:-maintenance@%h}"
WORKER_CONCURRENCY="${WORKER_CONCURRENCY:-1}"
MAINTENANCE_QUEUE="${MAINTENANCE_QUEUE:-maintenance}"
LOGLEVEL="${LOGLEVEL:-INFO}"
STOP_TIMEOUT="${STOP_TIMEOUT:-60}"
export MAINTENANCE_CONFIG

pidfile() { printf '%s/%s.pid\n' "$RUN_DIR" "$1"; }

# The pid in NAME's pidfile if that process is alive and is a celery process, else nothing.
# Checking the command line keeps a recycled pid from being mistaken for ours.
live_pid() {
  local file pid
  file="$(pidfile "$1")"
  [ -s "$file" ] || return 0
  pid="$(tr -dc '0-9' < "$file")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q celery; then
    printf '%s\n' "$pid"
  fi
}

command_for() {
  case "$1" in
    worker) printf '%s\0' "$CELERY" -A maintenance.worker worker -Q "$MAINTENANCE_QUEUE" \
              -n "$WORKER_NAME" -c "$WORKER_CONCURRENCY" -l "$LOGLEVEL" \
              --pidfile "$(pidfile worker)" ;;
    beat) printf '%s\0' "$CELERY" -A maintenance.worker beat -l "$LOGLEVEL" \
            -s "$RUN_DIR/celerybeat-schedule" --pidfile "$(pidfile beat)" ;;
  esac
}

start_one() {
  local name="$1" pid file out
  pid="$(live_pid "$name")"
  if [ -n "$pid" ]; then
    echo "$name: already running (pid $pid)"
    return 0
  fi
  file="$(pidfile "$name")"
  rm -f "$file"  # stale: its process is gone (celery would refuse to start over a live one)
  out="$LOG_DIR/$name.out"
  local -a cmd
  mapfile -d '' cmd < <(command_for "$name")
  (cd "$ROOT" && exec setsid "${cmd[@]}" >>"$out" 2>&1 </dev/null) &
  for _ in $(seq 1 300); do  # up to 30 s for celery to write its pidfile
    pid="$(live_pid "$name")"
    if [ -n "$pid" ]; then
      echo "$name: started (pid $pid, output $out)"
      return 0
    fi
    if ! kill -0 $! 2>/dev/null && [ ! -s "$file" ]; then break; fi
    sleep 0.1
  done
  echo "$name: failed to start; last lines of $out:" >&2
  tail -n 20 "$out" >&2 || true
  return 1
}

# True while PID, or any process of the group it leads (prefork children), is alive.
group_alive() { kill -0 "$1" 2>/dev/null || kill -0 -- "-$1" 2>/dev/null; }

stop_one() {
  local name="$1" pid file waited=0
  file="$(pidfile "$name")"
  pid="$(live_pid "$name")"
  if [ -z "$pid" ]; then
    if [ -e "$file" ]; then
      rm -f "$file"
      echo "$name: not running (stale pidfile removed)"
    else
      echo "$name: not running"
    fi
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  while group_alive "$pid" && [ "$waited" -lt "$((STOP_TIMEOUT * 10))" ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  if group_alive "$pid"; then
    echo "$name: still running after ${STOP_TIMEOUT}s, killing (pid $pid and its children)" >&2
    kill -KILL -- "-$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do group_alive "$pid" || break; sleep 0.1; done
  fi
  rm -f "$file"
  echo "$name: stopped (was pid $pid)"
}

status() {
  local name pid rc=0
  for name in worker beat; do
    pid="$(live_pid "$name")"
    if [ -n "$pid" ]; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; rc=3; fi
  done
  return "$rc"
}

case "${1:-status}" in
  start)
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    [ -f "$MAINTENANCE_CONFIG" ] || { echo "config not found: $MAINTENANCE_CONFIG" >&2; exit 2; }
    start_one worker
    start_one beat ;;
  stop)
    stop_one beat  # first, so that no new run is sent to a stopping worker
    stop_one worker ;;
  restart)
    "$0" stop
    "$0" start ;;
  status)
    status ;;
  *)
    echo "usage: $0 start|stop|status|restart" >&2
    exit 2 ;;
esac
