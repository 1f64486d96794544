#!/usr/bin/env bash
# End-to-end smoke test of the CPU image and the compose stack on one Linux host (docs/deploy.md):
#
#   bash deploy/smoke.sh            # as root: it may start dockerd and run debootstrap
#
# 1. Docker: uses the daemon that answers (DOCKER_HOST or the default socket); else starts a
#    private dockerd on its own socket under $AIM_SMOKE_DIR (no iptables, no default bridge, as
#    on a sandboxed VM) and stops it, and only it, on exit. Its data (images, build cache) stay
#    there for the next run: `rm -rf $AIM_SMOKE_DIR` once no dockerd uses it.
# 2. Base image: local/debian:bookworm made with debootstrap and `docker import` if missing, so
#    nothing comes from Docker Hub.
# 3. Builds the CPU image from this checkout with BuildKit (the embedded tiny model baked in),
#    passing the host's CA bundle as the build secret `ca`. If the host's pip finds the CPU
#    engine's torch==X+cpu wheel in a local directory (pip's find-links), that directory is served
#    to the build on 127.0.0.1 as its CPU_EXTRA_INDEX_URL.
# 4. Runs the image (`serve`, host network): waits for /ready, then one image and one 8-frame video
#    request at `balanced`, each checked for its answer and `usage.aim` (deploy/smoke_client.py).
# 5. Brings up deploy/compose.yaml (both replicas, the gateway, Prometheus; Grafana is left out),
#    sends a request through the gateway, kills replica-1's container and checks that the next
#    request is answered, by replica-2.
# 6. Prints one last line: build time, image size, time to ready, results. Exit code 0 on PASS.
#
# Environment (defaults in brackets):
#   AIM_SMOKE_DIR [/var/tmp/aim-vllm-smoke]  private dockerd's socket and data, logs, wheel index
#   AIM_SMOKE_BASE_IMAGE [local/debian:bookworm]  CPU_BASE_IMAGE (a Debian 12 image)
#   AIM_SMOKE_IMAGE [aim-vllm:cpu]            tag of the image built (compose runs this tag)
#   AIM_SMOKE_CA [/etc/ssl/certs/ca-certificates.crt]  CA bundle for pip in the build ("" = none)
#   AIM_SMOKE_CPU_INDEX                       CPU_EXTRA_INDEX_URL for the build (else see step 3)
#   AIM_SMOKE_PORT [18000]                    port of the single container's and compose's gateway
#   AIM_SMOKE_INDEX_PORT [18081]              port of the local wheel index (step 3)
#   AIM_SMOKE_READY_TIMEOUT [1500]            seconds to wait for /ready
#   AIM_SMOKE_STORAGE_DRIVER                  private dockerd's storage driver (default: its choice)
#   AIM_SMOKE_SKIP_COMPOSE=1                  stop after step 4
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=${AIM_SMOKE_DIR:-/var/tmp/aim-vllm-smoke}
base_image=${AIM_SMOKE_BASE_IMAGE:-local/debian:bookworm}
image=${AIM_SMOKE_IMAGE:-aim-vllm:cpu}
ca=${AIM_SMOKE_CA-/etc/ssl/certs/ca-certificates.crt}
port=${AIM_SMOKE_PORT:-18000}
ready_timeout=${AIM_SMOKE_READY_TIMEOUT:-1500}
prometheus_image=${AIM_PROMETHEUS_IMAGE:-local/prometheus:bookworm}
serve_name=aim-vllm-smoke-serve
logs=$state/logs
mkdir -p "$logs"

docker_cli=""
started_dockerd=""
index_server=""
summarized=""
compose_up=""
results=()

log() { printf '[smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

summary() {
  local verdict=$1
  summarized=1
  printf 'smoke: %s build=%ss image=%s ready=%ss compose_ready=%ss %s\n' "$verdict" \
    "${build_s:--}" "${image_size:--}" "${ready_s:--}" "${compose_ready_s:--}" "${results[*]:-}"
}

fail() {
  log "FAIL: $*"
  results+=("error=\"$*\"")
  summary FAIL
  exit 1
}

cleanup() {
  local status=$?
  set +e
  # An unexpected error (set -e) still ends with the summary line.
  [ "$status" != 0 ] && [ -z "$summarized" ] && summary FAIL
  if [ -n "$compose_up" ]; then
    compose logs --no-color > "$logs/compose.log" 2>&1
    compose down --volumes --timeout 10 > /dev/null 2>&1
  fi
  docker rm -f "$serve_name" > /dev/null 2>&1
  [ -n "$index_server" ] && kill "$index_server" 2> /dev/null
  if [ -n "$started_dockerd" ]; then
    log "stopping the dockerd this run started (pid $started_dockerd)"
    kill "$started_dockerd" 2> /dev/null
    for _ in $(seq 60); do kill -0 "$started_dockerd" 2> /dev/null || break; sleep 0.5; done
    # dockerd leaves its default network namespace mounted under its exec root.
    umount "$state/exec/netns/default" 2> /dev/null
  fi
}
trap cleanup EXIT

# ---- 1. A Docker daemon and a client that builds with BuildKit ---------------------------------
client_major() { command "$1" --version 2> /dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p'; }

pick_docker() {
  # Docker >= 23 builds through the buildx plugin; 20.10 (Debian 12's docker.io) has BuildKit
  # built in. Either works with DOCKER_BUILDKIT=1 `docker build`.
  local candidate major
  for candidate in ${AIM_SMOKE_DOCKER:-docker /usr/bin/docker}; do
    command -v "$candidate" > /dev/null || continue
    major=$(client_major "$candidate")
    if command "$candidate" buildx version > /dev/null 2>&1 || [ "${major:-99}" -lt 23 ]; then
      docker_cli=$candidate
      return
    fi
  done
  fail "no docker client that builds with BuildKit (install docker-buildx, or Debian's docker.io)"
}
docker() { DOCKER_BUILDKIT=1 "$docker_cli" "$@"; }

start_dockerd() {
  command -v dockerd > /dev/null || fail "no Docker daemon answers and dockerd is not installed (apt-get install docker.io)"
  log "starting a private dockerd on $state/docker.sock"
  local driver=()
  [ -n "${AIM_SMOKE_STORAGE_DRIVER:-}" ] && driver=(--storage-driver "$AIM_SMOKE_STORAGE_DRIVER")
  dockerd --host "unix://$state/docker.sock" --data-root "$state/data" --exec-root "$state/exec" \
    --pidfile "$state/dockerd.pid" --iptables=false --ip6tables=false --bridge=none "${driver[@]}" \
    > "$logs/dockerd.log" 2>&1 &
  started_dockerd=$!
  export DOCKER_HOST="unix://$state/docker.sock"
  for _ in $(seq 60); do
    docker info > /dev/null 2>&1 && return
    kill -0 "$started_dockerd" 2> /dev/null || break
    sleep 1
  done
  tail -5 "$logs/dockerd.log" >&2
  fail "the private dockerd did not start (log: $logs/dockerd.log)"
}

pick_docker
if ! docker info > /dev/null 2>&1; then
  export DOCKER_HOST="unix://$state/docker.sock"  # a private dockerd left by another run?
  docker info > /dev/null 2>&1 || start_dockerd
fi
log "docker: $docker_cli against ${DOCKER_HOST:-the default socket}, storage $(docker info --format '{{.Driver}}')"

# ---- 2. The Debian base image, without Docker Hub ----------------------------------------------
if ! docker image inspect "$base_image" > /dev/null 2>&1; then
  [ "$base_image" = local/debian:bookworm ] || fail "base image $base_image is missing"
  command -v debootstrap > /dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
  log "building $base_image with debootstrap"
  rootfs=$state/rootfs
  rm -rf "$rootfs"
  nice -n 10 debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian \
    > "$logs/debootstrap.log" 2>&1 || fail "debootstrap failed (log: $logs/debootstrap.log)"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin  # every image runs apt-get update
  tar -C "$rootfs" -c . | docker import - "$base_image" > /dev/null
  rm -rf "$rootfs"
fi

# ---- 3. The CPU image --------------------------------------------------------------------------
serve_local_wheel() {
  # The CPU engine pins torch==X+cpu, which only PyTorch's CPU index serves. A host whose pip finds
  # that wheel in a local directory (find-links) lends it to the build as a one-wheel index.
  local version dirs dir wheel index_port
  version=$(sed -n 's/^torch==//p' "$root/requirements/torch-override.txt")
  dirs="${PIP_FIND_LINKS:-} $(pip3 config get global.find-links 2> /dev/null || true)"
  for dir in $dirs; do
    dir=${dir#file://}
    wheel=$(find "$dir" -maxdepth 1 -name "torch-$version+cpu-cp311-*.whl" 2> /dev/null | head -1 || true)
    [ -n "$wheel" ] && break
  done
  [ -n "${wheel:-}" ] || return 0
  rm -rf "$state/index" && mkdir -p "$state/index/simple/torch"
  ln -s "$wheel" "$state/index/simple/torch/"
  # A fixed port keeps the build argument, and so BuildKit's cache of the install step, stable.
  index_port=$(python3 -c '
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    s.bind(("127.0.0.1", 0))  # taken: any free port (the install step is rebuilt)
print(s.getsockname()[1])' "${AIM_SMOKE_INDEX_PORT:-18081}")
  python3 -m http.server "$index_port" --bind 127.0.0.1 --directory "$state/index" > "$logs/index.log" 2>&1 &
  index_server=$!
  cpu_index=http://127.0.0.1:$index_port/simple
  log "serving $(basename "$wheel") to the build at $cpu_index"
}

cpu_index=${AIM_SMOKE_CPU_INDEX:-}
[ -n "$cpu_index" ] || serve_local_wheel
build_args=(--network host --build-arg ENGINE=cpu --build-arg "CPU_BASE_IMAGE=$base_image" --build-arg BAKE_TINY_MODEL=1)
[ -n "$ca" ] && build_args+=(--secret "id=ca,src=$ca")
[ -n "$cpu_index" ] && build_args+=(--build-arg "CPU_EXTRA_INDEX_URL=$cpu_index")
log "building $image from $root (log: $logs/build.log)"
start=$(date +%s)
DOCKER_BUILDKIT=1 nice -n 10 "$docker_cli" build --progress plain "${build_args[@]}" -t "$image" "$root" > "$logs/build.log" 2>&1 \
  || { tail -20 "$logs/build.log" >&2; fail "image build failed (log: $logs/build.log)"; }
build_s=$(($(date +%s) - start))
image_size=$(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.2fGB", $1 / 1e9}')
user=$(docker image inspect --format '{{.Config.User}}' "$image")
if [ -z "$user" ] || [ "${user%%:*}" = 0 ]; then fail "the image runs as root"; fi
docker run --rm --entrypoint sh "$image" -c 'ls "$HOME"/.cache/aim-vllm/models/*/.complete' > /dev/null \
  || fail "the embedded model is not baked into $image"
log "built in ${build_s}s: $image_size, user $user, embedded model baked in"

# ---- 4. One container: serve (replica + gateway) -----------------------------------------------
wait_ready() {  # URL CONTAINER...: until URL answers 200 (seconds in $waited); fails if a container exits
  local url=$1 start=$SECONDS container
  shift
  until curl -fs -o /dev/null "$url"; do
    for container in "$@"; do
      [ "$(docker inspect --format '{{.State.Running}}' "$container" 2> /dev/null)" = true ] \
        || { docker logs --tail 30 "$container" >&2 2> /dev/null; fail "$container exited before $url was ready"; }
    done
    ((SECONDS - start < ready_timeout)) || fail "$url not ready after ${ready_timeout}s"
    sleep 2
  done
  waited=$((SECONDS - start))
}

ask() {  # URL KIND...: the smoke client, run with the image's Python on the host network
  docker run --rm -i --network host --entrypoint python "$image" - "$@" < "$root/deploy/smoke_client.py"
}

log "running $image: serve on 127.0.0.1:$port"
docker rm -f "$serve_name" > /dev/null 2>&1 || true
docker run -d --name "$serve_name" --network host --init --shm-size 2g \
  -e "AIM_HEALTHCHECK_URL=http://127.0.0.1:$port/health" "$image" \
  serve --host 127.0.0.1 --port "$port" > /dev/null
wait_ready "http://127.0.0.1:$port/ready" "$serve_name"
ready_s=$waited
log "ready after ${ready_s}s"
answers=$(ask "http://127.0.0.1:$port" image video) || fail "container requests failed: $answers"
read -r -a words <<< "$answers"
results+=("${words[@]}")
# The image's HEALTHCHECK runs every 30 s: give it one interval to see the container ready.
for _ in $(seq 40); do
  health=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$serve_name")
  [ "$health" = starting ] || break
  sleep 1
done
results+=("healthcheck=${health:-none}")
docker logs "$serve_name" > "$logs/serve.log" 2>&1
docker rm -f "$serve_name" > /dev/null

if [ "${AIM_SMOKE_SKIP_COMPOSE:-0}" = 1 ]; then
  results+=("compose=skipped")
  summary PASS
  exit 0
fi

# ---- 5. compose: two replicas, the gateway, Prometheus; fail-over ------------------------------
compose() {
  local files=(-f "$root/deploy/compose.yaml")
  if "$docker_cli" compose version > /dev/null 2>&1; then
    "$docker_cli" compose "${files[@]}" "$@"
  else
    docker-compose "${files[@]}" "$@"
  fi
}
export AIM_GATEWAY_PORT=$port AIM_ENGINE=cpu AIM_PROMETHEUS_IMAGE=$prometheus_image
if ! docker image inspect "$prometheus_image" > /dev/null 2>&1; then
  [ "$prometheus_image" = local/prometheus:bookworm ] || fail "Prometheus image $prometheus_image is missing"
  log "building $prometheus_image from deploy/prometheus.Dockerfile"
  docker build --network host --build-arg "BASE_IMAGE=$base_image" -t "$prometheus_image" - \
    < "$root/deploy/prometheus.Dockerfile" > "$logs/prometheus-build.log" 2>&1 \
    || fail "Prometheus image build failed (log: $logs/prometheus-build.log)"
fi
log "compose up: replica-1, replica-2, gateway, prometheus (gateway on 127.0.0.1:$port)"
compose_up=1
start=$SECONDS
compose up -d --no-build replica-1 replica-2 gateway prometheus > "$logs/compose-up.log" 2>&1 \
  || { tail -20 "$logs/compose-up.log" >&2; fail "compose up failed (log: $logs/compose-up.log)"; }
replica_1=$(compose ps -q replica-1)
replica_2=$(compose ps -q replica-2)
gateway=$(compose ps -q gateway)
wait_ready "http://127.0.0.1:$port/ready" "$gateway"
compose_ready_s=$((SECONDS - start))
log "compose gateway ready after ${compose_ready_s}s"

chat_posts() { docker logs "$1" 2>&1 | grep -c 'POST /v1/chat/completions' || true; }
answers=$(ask "http://127.0.0.1:$port" image) || fail "request through the compose gateway failed"
results+=("gateway_$answers")
before=$(chat_posts "$replica_2")
log "killing replica-1 ($replica_1)"
docker kill "$replica_1" > /dev/null
answers=$(ask "http://127.0.0.1:$port" image) || fail "request after killing replica-1 failed"
results+=("after_kill_$answers")
after=$(chat_posts "$replica_2")
((after > before)) || fail "the request after the kill was not answered by replica-2"
results+=("failover=ok(replica-2)")

# Prometheus scrapes every 10 s: after two intervals it has seen replica-1 go down.
sleep 21
targets=$(curl -fs 'http://127.0.0.1:9090/api/v1/query?query=up' | python3 -c '
import json, sys
rows = json.load(sys.stdin)["data"]["result"]
print(",".join(sorted(r["metric"]["instance"].split(":")[0] + ":" + r["value"][1] for r in rows)))' \
  || echo "unreachable")
results+=("prometheus_up=$targets")
summary PASS
