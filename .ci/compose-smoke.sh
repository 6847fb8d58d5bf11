#!/usr/bin/env bash
# Smoke test of the docker compose deployment, on a Debian 12 machine with no container
# registry (PyPI and Debian's apt only):
#   docker engine + compose (installed if missing), dockerd (started if none answers),
#   base image (mkbase.sh if missing), wheels fetched on the host, image built offline,
#   `docker compose up -d --wait`, the pattern client as `docker compose run --rm client`,
#   kernel endpoints unreachable from the host and from a client container (no kernel TCP
#   port; ctl.kpanic/ctl.shutdown to every port change nothing; kernel volume 0700, sockets
#   0600), attach from the host (`python -m machine status`), graceful stop, `down`, no
#   leftovers.
#
# Environment:
#   DOCKER_TOOLS   shared/tools/docker (default: ../shared/tools/docker beside the repo)
#   PYTHON         host python for the attach check (default python3; when it lacks pyzmq and
#                  msgspec: the repo's .venv, else the fetched wheels on a private PYTHONPATH)
#   UVM_MACHINE_BASE_PORT   base port (default: a free range picked at random)
#   UVM_MACHINE_BASE_IMAGE  base image (default local/python:3.11-bookworm, built by mkbase.sh)
#   UVM_MACHINE_IMAGE       image tag to build (default uvm-machine:smoke)
set -euo pipefail

T0=$(date +%s%N)
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
TOOLS=${DOCKER_TOOLS:-$ROOT/../shared/tools/docker}
export DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-$ROOT/.dockerd.pid}
export DOCKERD_LOG=${DOCKERD_LOG:-$ROOT/.dockerd.log}
COMPOSE_PROJECT_NAME=uvm-smoke-$(date +%s)-$$
export COMPOSE_PROJECT_NAME
export UVM_MACHINE_BASE_IMAGE=${UVM_MACHINE_BASE_IMAGE:-local/python:3.11-bookworm}
export UVM_MACHINE_IMAGE=${UVM_MACHINE_IMAGE:-uvm-machine:smoke}
export UVM_MACHINE_PIP_ARGS=--no-index
WHEELS=$ROOT/docker/wheels
TMP=$(mktemp -d)
STARTED_DOCKERD=0
UP=0
TIMINGS=()

log() { echo "[compose-smoke] $*"; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
fmt_ms() { printf '%d.%d s' $(( $1 / 1000 )) $(( $1 % 1000 / 100 )); }

# step NAME CMD...: run CMD, record and print how long it took.
step() {
  local name=$1 t rc=0
  shift
  log "$name ..."
  t=$(date +%s%N)
  "$@" || rc=$?
  TIMINGS+=("$(printf '%-26s %s' "$name" "$(fmt_ms "$(ms_since "$t")")")")
  log "$name: $(fmt_ms "$(ms_since "$t")")$([ $rc = 0 ] || echo " FAILED (status $rc)")"
  return $rc
}

DC=(docker compose -f "$ROOT/docker-compose.yml" --project-directory "$ROOT")
dc() { "${DC[@]}" "$@"; }

leftovers() {
  docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
  docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
  docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
}

cleanup() {
  local rc=$? left
  set +e
  if [ "$UP" = 1 ]; then
    if [ $rc != 0 ]; then
      log "FAILED (status $rc); containers and their last log lines:"
      dc --profile client --profile stress ps -a
      dc --profile client --profile stress logs --no-color --timestamps --tail 60
    fi
    step "compose down" dc --profile client --profile stress down -v --remove-orphans --timeout 20
    left=$(leftovers)
    if [ -n "$left" ]; then
      log "LEFT BEHIND by project $COMPOSE_PROJECT_NAME:"; echo "$left"
      [ $rc != 0 ] || rc=1
    else
      log "no container, volume or network of $COMPOSE_PROJECT_NAME is left"
    fi
  fi
  if [ "$STARTED_DOCKERD" = 1 ]; then step "dockerd stop" bash "$TOOLS/dockerd-stop.sh"; fi
  rm -rf "$TMP"
  log "timings:"
  printf '  %s\n' "${TIMINGS[@]}"
  log "$([ $rc = 0 ] && echo PASSED || echo "FAILED (status $rc)") in $(fmt_ms "$(ms_since "$T0")")"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ -d "$TOOLS" ] || { log "no docker tools at $TOOLS (set DOCKER_TOOLS)"; exit 1; }

# -- docker -------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! docker compose version >/dev/null 2>&1 \
   || ! command -v mmdebstrap >/dev/null; then
  step "install docker" bash "$TOOLS/install-docker.sh"
fi
if ! docker info >/dev/null 2>&1; then
  STARTED_DOCKERD=1
  step "dockerd start" bash "$TOOLS/dockerd-start.sh"
fi
if ! docker image inspect "$UVM_MACHINE_BASE_IMAGE" >/dev/null 2>&1; then
  step "base image (mkbase)" bash "$TOOLS/mkbase.sh" "$UVM_MACHINE_BASE_IMAGE"
fi

# -- image ----------------------------------------------------------------------------------
# The runtime dependencies and the build backend, as pyproject.toml declares them.
python3 - "$TMP" <<'EOF'
import sys, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))
runtime, build = p["project"]["dependencies"], p["build-system"]["requires"]
open(f"{sys.argv[1]}/runtime.txt", "w").write("\n".join(runtime) + "\n")
open(f"{sys.argv[1]}/requirements.txt", "w").write("\n".join(runtime + build) + "\n")
EOF
step "fetch wheels" bash "$TOOLS/fetch-wheels.sh" "$TMP/requirements.txt" "$WHEELS"
step "compose config" dc config -q
build_image() { # quiet unless it fails
  timeout 600 "${DC[@]}" build --progress=plain supervisor >"$TMP/build.log" 2>&1 \
    || { tail -n 40 "$TMP/build.log"; return 1; }
  docker image ls "$UVM_MACHINE_IMAGE"
}
step "image build" build_image

# -- machine ----------------------------------------------------------------------------------
port_range_free() { # BASE: are BASE..BASE+51 all free on the host (the stress step uses B+50, 51)?
  ! ss -Htln | awk '{print $4}' | sed 's/.*://' \
    | awk -v b="$1" '$1 >= b && $1 <= b + 51 {found = 1} END {exit !found}'
}
if [ -z "${UVM_MACHINE_BASE_PORT:-}" ]; then
  for _ in $(seq 1 50); do
    # below the ephemeral range (32768+), so no outgoing connection can take a port meanwhile
    UVM_MACHINE_BASE_PORT=$(( (RANDOM % 120 + 200) * 100 ))  # 20000..31900
    port_range_free "$UVM_MACHINE_BASE_PORT" && break
  done
fi
export UVM_MACHINE_BASE_PORT
ENDPOINT=tcp://127.0.0.1:$UVM_MACHINE_BASE_PORT
log "project $COMPOSE_PROJECT_NAME, image $UVM_MACHINE_IMAGE, attach endpoint $ENDPOINT"

UP=1
step "compose up --wait" timeout 300 "${DC[@]}" up -d --wait --wait-timeout 180
dc ps

# -- client in compose ----------------------------------------------------------------------
step "client (compose run)" timeout 300 "${DC[@]}" run --rm -T client

# -- the stress harness, distributed: a headless Locust master and two workers ---------------
# (docker-compose.yml profile `stress`). The master's exit status is the verdict
# (docs/stress.md): 0 = every byte verified, no failure, no panic, every frame back.
stress_distributed() {
  export UVM_MACHINE_LOCUST_MASTER_PORT=$((UVM_MACHINE_BASE_PORT + 50))
  export UVM_MACHINE_LOCUST_WEB_PORT=$((UVM_MACHINE_BASE_PORT + 51))
  dc --profile stress up -d --no-deps --scale locust-worker=2 locust-worker
  local rc=0
  LOCUST_HEADLESS=true LOCUST_USERS=4 LOCUST_SPAWN_RATE=4 LOCUST_RUN_TIME=8s \
    LOCUST_EXPECT_WORKERS=2 UVM_STRESS_MIX=pattern=2,sender=1,forker=1 \
    timeout 180 "${DC[@]}" --profile stress run --rm -T --no-deps locust \
    || rc=$?
  dc --profile stress rm -sf locust-worker >/dev/null
  return $rc
}

# -- attach from the host ---------------------------------------------------------------------
PY=${PYTHON:-python3}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
if ! "$PY" -c 'import zmq, msgspec' 2>/dev/null; then
  if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ] \
     && "$ROOT/.venv/bin/python" -c 'import zmq, msgspec' 2>/dev/null; then
    PY=$ROOT/.venv/bin/python
  else
    log "$PY has no pyzmq/msgspec: installing the fetched wheels on a private PYTHONPATH"
    "$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" \
      --target "$TMP/site" -r "$TMP/runtime.txt"
    PYTHONPATH=$PYTHONPATH:$TMP/site
  fi
fi
# -- the kernel stays inside: no kernel endpoint reachable from the host or a client ---------
# Kernel endpoints are ipc sockets on the `kernel` volume (docker-compose.yml): no TCP
# listener may exist on the TCP layout's kernel ports, and ctl.kpanic / ctl.shutdown sent
# to every port of the range, from the host and from a client container, must change
# nothing (the status check below then finds the machine running with 4 roles alive).
knock_summary() { # JSON report of tests/integration/kernel_knock.py -> one line
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
eperm = sorted(int(p) for p, o in r["replies"].items() if any("EPERM" in x for x in o))
obeyed, reachable = r["obeyed"] or "none", r["reachable"] or "none"
print(f"    EPERM from ports {eperm}; obeyed: {obeyed}; kernel sockets reachable: {reachable}")
EOF
}
kernel_private() {
  local B=$UVM_MACHINE_BASE_PORT bad=0 listening mp
  listening=$(ss -Htln | awk '{print $4}' | sed 's/.*://' \
    | awk -v b="$B" '$1 >= b && $1 <= b + 42 {print $1 - b}' | sort -n | uniq | tr '\n' ' ')
  echo "  TCP listeners at B+: $listening"
  [ "$listening" = "0 1 11 12 21 22 31 32 41 42 " ] \
    || { log "expected listeners at B+0 1 11 12 21 22 31 32 41 42 only"; bad=1; }
  echo "  knock from the host:"
  "$PY" tests/integration/kernel_knock.py 127.0.0.1 "$B" >"$TMP/knock-host.json" \
    || { cat "$TMP/knock-host.json"; log "a kernel request from the host was obeyed"; bad=1; }
  knock_summary "$TMP/knock-host.json"
  echo "  knock from a client container (and look for the kernel sockets there):"
  dc run --rm -T --no-deps --entrypoint python client - 127.0.0.1 "$B" \
    --no-dir /run/uvm-machine <tests/integration/kernel_knock.py >"$TMP/knock-client.json" \
    || { cat "$TMP/knock-client.json"; log "the kernel was reachable from a client"; bad=1; }
  knock_summary "$TMP/knock-client.json"
  # The volume itself: the uid of the services (10001) alone, sockets and key 0600.
  mp=$(docker volume inspect -f '{{.Mountpoint}}' "${COMPOSE_PROJECT_NAME}_kernel")
  echo "  kernel volume: $(stat -c '%a %u' "$mp");" \
    "$(cd "$mp" && stat -c '%n %F %a %u' -- * | paste -sd ';' | sed 's/;/; /g')"
  [ "$(stat -c '%a %u' "$mp")" = "700 10001" ] || { log "kernel volume is not 0700 uid 10001"; bad=1; }
  for f in mmu.kernel uvm.kernel pdaemon.kernel net.kernel machine.key; do
    [ "$(stat -c '%a %u' "$mp/$f" 2>&1)" = "600 10001" ] || { log "$f: not 0600 uid 10001"; bad=1; }
  done
  # Wait for what must NOT happen: a role obeying ctl.shutdown exits and the supervisor
  # misses its heartbeats within about 3 s; a ctl.kpanic stops the machine at once.
  sleep 5
  [ "$(dc ps -q --status running | wc -l)" = 5 ] || { log "a container stopped"; dc ps -a; bad=1; }
  return $bad
}
step "kernel unreachable" kernel_private
step "stress (2 workers)" stress_distributed

log "attach from the host with $PY"
step "host attach (status)" "$PY" -m machine status --endpoint "$ENDPOINT"
"$PY" -m machine status --endpoint "$ENDPOINT" --json >"$TMP/status.json"
"$PY" - "$TMP/status.json" <<'EOF'
import json, sys
st = json.load(open(sys.argv[1]))
problems = []
if st["state"] != "running":
    problems.append(f"machine is {st['state']}")
for role in ("mmu", "uvm", "pdaemon", "net"):
    r = st["roles"].get(role)
    if not r or not r["alive"]:
        problems.append(f"role {role} is not alive")
# The client's two processes ran on this very machine.
spawns = st["roles"].get("uvm", {}).get("counters", {}).get("spawns", 0)
if spawns < 2:
    problems.append(f"uvm counted {spawns} spawns, expected the client's 2")
if problems:
    sys.exit("host attach: " + "; ".join(problems))
print(f"host attach: machine running, 4 roles alive, uvm spawns={spawns}")
EOF

# -- graceful stop: the supervisor stops the roles in reverse order -------------------------
graceful_stop() {
  dc stop --timeout 20 supervisor
  for _ in $(seq 1 100); do
    [ -z "$(dc ps -q)" ] && break
    sleep 0.2
  done
  local bad=0 id name code
  for id in $(dc ps -aq); do
    read -r name code < <(docker inspect -f '{{.Name}} {{.State.ExitCode}}' "$id")
    echo "  ${name#/}: exit $code"
    [ "$code" = 0 ] || bad=1
  done
  [ -z "$(dc ps -q)" ] || { log "containers still running after the supervisor stopped"; bad=1; }
  return $bad
}
step "graceful stop" graceful_stop
