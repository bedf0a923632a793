#!/usr/bin/env bash
# Entrypoint of the SteadyDancer ComfyUI image (ENTRYPOINT ["/opt/runtime/start.sh"]). See /opt/runtime/README.md.
#
#   pod mode         GPU preflight -> model paths for /workspace -> [fetch models] -> ComfyUI on 0.0.0.0:8188
#   serverless mode  GPU preflight -> model paths for /runpod-volume -> [fetch models] -> ComfyUI on 127.0.0.1:8188
#                    (restarted if it dies) + the RunPod handler (python -m comfy_worker) in the foreground
#
# Arguments go to the mode's main program: ComfyUI's main.py (pod) or the handler (serverless, e.g.
# --test_input '{"input": {...}}' to run one job and exit). Every line this script and its children print carries
# a prefix: [start], [preflight], [models], [comfyui], [worker].
set -euo pipefail

log() { printf '[start] %s\n' "$*"; }
die() {
  printf '[start] error: %s\n' "$1"
  [[ -n ${2:-} ]] && printf '[start]   fix: %s\n' "$2"
  exit "${3:-1}"
}
prefix() { sed -u "s/^/[$1] /"; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- settings (environment) --------------------------------------------------------------------------------------
COMFYUI_DIR="${COMFYUI_DIR:-/opt/ComfyUI}"
PYTHON="${PYTHON:-/opt/venv/bin/python}"
POD_VOLUME="${POD_VOLUME:-/workspace}"
SERVERLESS_VOLUME="${SERVERLESS_VOLUME:-/runpod-volume}"
COMFY_PORT="${COMFY_PORT:-8188}"
COMFY_ARGS="${COMFY_ARGS:-}"
COMFY_PID_FILE="${COMFY_PID_FILE:-/tmp/comfyui.pid}"
COMFY_MAX_RESTARTS="${COMFY_MAX_RESTARTS:-5}"
COMFY_STOP_GRACE_S="${COMFY_STOP_GRACE_S:-10}"
RUNTIME_STATE_DIR="${RUNTIME_STATE_DIR:-/tmp/comfy-runtime}"
SKIP_GPU_PREFLIGHT="${SKIP_GPU_PREFLIGHT:-0}"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# --- mode --------------------------------------------------------------------------------------------------------
mode="${RUNPOD_MODE:-}"
if [[ -z $mode ]]; then
  # RunPod sets RUNPOD_ENDPOINT_ID only on serverless workers.
  if [[ -n ${RUNPOD_ENDPOINT_ID:-} ]]; then
    mode=serverless mode_why="RUNPOD_MODE unset, RUNPOD_ENDPOINT_ID is set"
  else
    mode=pod mode_why="RUNPOD_MODE unset, RUNPOD_ENDPOINT_ID is not set"
  fi
else
  mode_why="RUNPOD_MODE=$mode"
fi
case "$mode" in
  pod | serverless) ;;
  *) die "RUNPOD_MODE=\"$mode\" is not a mode" "set RUNPOD_MODE to pod or serverless (or leave it unset)" 3 ;;
esac
log "mode: $mode ($mode_why)"

[[ -f $COMFYUI_DIR/main.py ]] || die "ComfyUI is not at COMFYUI_DIR=$COMFYUI_DIR (no main.py)" \
  "set COMFYUI_DIR to the ComfyUI checkout" 3
[[ -x $PYTHON ]] || die "PYTHON=$PYTHON is not an executable" "set PYTHON to the image's interpreter" 3
[[ $COMFY_PORT =~ ^[0-9]+$ ]] || die "COMFY_PORT=\"$COMFY_PORT\" is not a port number" "" 3
[[ $COMFY_MAX_RESTARTS =~ ^[0-9]+$ ]] || die "COMFY_MAX_RESTARTS=\"$COMFY_MAX_RESTARTS\" is not a number" "" 3
[[ $COMFY_STOP_GRACE_S =~ ^[0-9]+$ ]] || die "COMFY_STOP_GRACE_S=\"$COMFY_STOP_GRACE_S\" is not a whole number" "" 3
if [[ -n ${MODELS_VARIANT:-} ]]; then
  die "MODELS_VARIANT is not a setting" "use MODELS_VARIANTS (plural, comma-separated), e.g. MODELS_VARIANTS=fp8" 3
fi

# --- GPU preflight -----------------------------------------------------------------------------------------------
if [[ $SKIP_GPU_PREFLIGHT == 1 ]]; then
  log "GPU preflight skipped (SKIP_GPU_PREFLIGHT=1)"
else
  log "GPU preflight: CUDA, flash-attn, mmcv"
  if ! "$PYTHON" -m comfy_worker.preflight 2>&1 | prefix preflight; then
    die "the GPU preflight failed (see the [preflight] lines above)" \
      "run on a GPU machine the image was built for, or set SKIP_GPU_PREFLIGHT=1 to start anyway" 12
  fi
fi

# --- volume and model paths --------------------------------------------------------------------------------------
if [[ $mode == serverless ]]; then candidates=("$SERVERLESS_VOLUME" "$POD_VOLUME"); else candidates=("$POD_VOLUME" "$SERVERLESS_VOLUME"); fi
volume="${VOLUME_ROOT:-}"
if [[ -z $volume ]]; then
  for dir in "${candidates[@]}"; do
    if [[ -d $dir ]]; then volume="$dir"; break; fi
  done
fi
if [[ -n $volume ]]; then
  [[ -d $volume ]] || die "VOLUME_ROOT=$volume is not a folder" "mount the volume there or unset VOLUME_ROOT" 3
  log "volume: $volume"
  MODELS_DEST="${MODELS_DEST:-$volume/models}"
else
  log "no volume at ${candidates[*]}: models come from MODELS_DEST or ComfyUI's own models folder"
  MODELS_DEST="${MODELS_DEST:-$COMFYUI_DIR/models}"
fi
export MODELS_DEST
baked="${BAKED_MODELS_DIR:-}"
[[ -n $baked && -d $baked && $baked != "$MODELS_DEST" ]] || baked=""

# comfyui_controlnet_aux (DWPose) reads its checkpoints from $AUX_ANNOTATOR_CKPTS_PATH/<repo>/<file>: the volume's
# annotators, or the image's baked ones when the volume has none.
if [[ -z ${AUX_ANNOTATOR_CKPTS_PATH:-} ]]; then
  AUX_ANNOTATOR_CKPTS_PATH="$MODELS_DEST/annotators"
  if [[ -n $baked && -d $baked/annotators ]] && ! compgen -G "$MODELS_DEST/annotators/*" >/dev/null; then
    AUX_ANNOTATOR_CKPTS_PATH="$baked/annotators"
  fi
fi
export AUX_ANNOTATOR_CKPTS_PATH

model_roots=(--models-dir "$MODELS_DEST")
# Volumes made for other ComfyUI templates keep models in <volume>/ComfyUI/models: read those too, after ours.
if [[ -n $volume && -d $volume/ComfyUI/models && $volume/ComfyUI/models != "$MODELS_DEST" ]]; then
  model_roots+=(--models-dir "$volume/ComfyUI/models")
  log "also reading models from $volume/ComfyUI/models"
fi
# Models baked into the image at build time (BAKE_MODELS): read last, so the volume's copy of a file wins.
if [[ -n $baked ]]; then
  model_roots+=(--models-dir "$baked")
  log "also reading the image's baked models from $baked"
fi
extra_paths="$RUNTIME_STATE_DIR/extra_model_paths.yaml"
mkdir -p "$RUNTIME_STATE_DIR"
"$PYTHON" -m comfy_worker.model_paths "${model_roots[@]}" --out "$extra_paths" --create 2>&1 | prefix start ||
  die "could not write $extra_paths" "check that RUNTIME_STATE_DIR=$RUNTIME_STATE_DIR is writable" 3
log "models: $MODELS_DEST (extra_model_paths: $extra_paths); annotators: $AUX_ANNOTATOR_CKPTS_PATH"

# --- optional model fetch ----------------------------------------------------------------------------------------
if [[ -n ${MODELS_VARIANTS:-} ]]; then FETCH_MODELS="${FETCH_MODELS:-1}"; else FETCH_MODELS="${FETCH_MODELS:-0}"; fi
if [[ $FETCH_MODELS == 1 ]]; then
  variants="${MODELS_VARIANTS:-}"
  log "fetching missing models into $MODELS_DEST (variants: ${variants:-default})"
  if ! "$PYTHON" -m models --dest "$MODELS_DEST" 2>&1 | prefix models; then
    die "fetching models failed (see the [models] lines above)" \
      "fix the cause (HF_TOKEN, disk space, network), or set FETCH_MODELS=0 and put the files on the volume" 4
  fi
fi

# --- ComfyUI -----------------------------------------------------------------------------------------------------
if [[ $mode == pod ]]; then listen="${COMFY_LISTEN:-0.0.0.0}"; else listen="${COMFY_LISTEN:-127.0.0.1}"; fi
if [[ $mode == pod && -n $volume ]]; then
  # Pods keep what users make on the volume; serverless workers keep nothing between jobs.
  export COMFY_OUTPUT_DIR="${COMFY_OUTPUT_DIR:-$volume/comfyui/output}"
  COMFY_INPUT_DIR="${COMFY_INPUT_DIR:-$volume/comfyui/input}"
  COMFY_USER_DIR="${COMFY_USER_DIR:-$volume/comfyui/user}"
else
  export COMFY_OUTPUT_DIR="${COMFY_OUTPUT_DIR:-$COMFYUI_DIR/output}"
  COMFY_INPUT_DIR="${COMFY_INPUT_DIR:-}"
  COMFY_USER_DIR="${COMFY_USER_DIR:-}"
fi
comfy_cmd=("$PYTHON" -u "$COMFYUI_DIR/main.py" --listen "$listen" --port "$COMFY_PORT" --disable-auto-launch
  --extra-model-paths-config "$extra_paths" --output-directory "$COMFY_OUTPUT_DIR")
[[ -n $COMFY_INPUT_DIR ]] && comfy_cmd+=(--input-directory "$COMFY_INPUT_DIR")
if [[ -n $COMFY_USER_DIR ]]; then mkdir -p "$COMFY_USER_DIR"; comfy_cmd+=(--user-directory "$COMFY_USER_DIR"); fi
if [[ -n $COMFY_ARGS ]]; then
  read -r -a extra_args <<<"$COMFY_ARGS"
  comfy_cmd+=("${extra_args[@]}")
fi
export COMFY_PORT COMFY_PID_FILE

if [[ $mode == pod ]]; then
  log "starting ComfyUI on $listen:$COMFY_PORT: ${comfy_cmd[*]} $*"
  echo $$ >"$COMFY_PID_FILE"
  cd "$COMFYUI_DIR"
  exec "${comfy_cmd[@]}" "$@" > >(prefix comfyui) 2>&1
fi

# Serverless: ComfyUI in the background, restarted when it dies (a crash fails the running job, not the worker),
# and the handler in the foreground. If ComfyUI cannot stay up, the worker exits so RunPod replaces it.
supervise_comfyui() {
  local pid="" backoff="" rc started failures=0
  # On TERM: stop ComfyUI and wait for it (KILL after COMFY_STOP_GRACE_S), so nothing outlives the worker. Its
  # exit is seen in /proc: an exited child stays a zombie (and answers kill -0) until it is waited for.
  # shellcheck disable=SC2317 # called from the trap
  stop_comfyui() {
    [[ -n $backoff ]] && kill "$backoff" 2>/dev/null
    if [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null; then
      local i state
      for ((i = 0; i < COMFY_STOP_GRACE_S * 10; i++)); do
        state=""
        read -r _ _ state _ 2>/dev/null <"/proc/$pid/stat" || break
        [[ $state == Z ]] && break
        sleep 0.1
      done
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
    exit 0
  }
  trap stop_comfyui TERM INT
  cd "$COMFYUI_DIR"
  while :; do
    started=$SECONDS
    "${comfy_cmd[@]}" > >(prefix comfyui) 2>&1 &
    pid=$!
    echo "$pid" >"$COMFY_PID_FILE"
    rc=0
    wait "$pid" || rc=$?
    if ((SECONDS - started >= 60)); then failures=0; fi
    failures=$((failures + 1))
    if ((failures > COMFY_MAX_RESTARTS)); then
      log "ComfyUI exited $failures times in a row within a minute of starting (last status $rc); giving up"
      exit 1
    fi
    log "ComfyUI exited with status $rc; restarting it (restart $failures of at most $COMFY_MAX_RESTARTS in a row)"
    # In the background so TERM interrupts it; its output goes nowhere so it never holds the log pipe open.
    sleep $((failures * 2)) >/dev/null 2>&1 &
    backoff=$!
    wait "$backoff" || true
    backoff=""
  done
}

rm -f "$COMFY_PID_FILE"
log "starting ComfyUI on $listen:$COMFY_PORT and the handler: ${comfy_cmd[*]}"
supervise_comfyui &
supervisor=$!
"$PYTHON" -u -m comfy_worker "$@" > >(prefix worker) 2>&1 &
worker=$!

# shellcheck disable=SC2317 # called from the trap below
stop_all() {
  kill -TERM "$worker" "$supervisor" 2>/dev/null || true
  wait "$worker" "$supervisor" 2>/dev/null || true
}
trap 'log "stopping (signal)"; stop_all; exit 143' TERM INT

rc=0
finished=""
wait -n -p finished "$worker" "$supervisor" || rc=$?
if [[ $finished == "$supervisor" ]]; then
  log "stopping the handler: ComfyUI is down for good"
  kill -TERM "$worker" 2>/dev/null || true
  wait "$worker" 2>/dev/null || true
  exit 1
fi
log "the handler exited with status $rc; stopping ComfyUI"
kill -TERM "$supervisor" 2>/dev/null || true
wait "$supervisor" 2>/dev/null || true
exit "$rc"
