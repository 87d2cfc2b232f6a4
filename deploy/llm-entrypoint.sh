#!/usr/bin/env bash
# Entrypoint of the GPU image (Dockerfile.llm).
#
# Cold start, in this order:
#   1. start `ollama serve` on $OLLAMA_HOST (0.0.0.0:8080, the Cloud Run container port). Cloud
#      Run's startup probe is a TCP probe on that port, so the instance takes traffic as soon as
#      Ollama listens: the request that woke the instance (the UI's pre-warm for the model the
#      user picked) goes straight to Ollama, which loads that model on demand.
#   2. after a short grace period ($LLM_FIRST_REQUEST_GRACE_SECONDS) for that request to arrive,
#      load the baked models ($LLM_MODELS) one at a time with Ollama's documented preload (an
#      empty /api/generate, keep_alive -1). Before each load it asks /api/ps which models
#      users have already asked for (Ollama lists a model there while it loads) and finishes
#      those first; the rest follow in $LLM_MODELS order.
#   3. after each load, /api/ps must report size_vram == size for that model: the whole model is
#      in GPU memory. Anything else means Ollama fell back to the CPU (for instance a CUDA
#      backend that refuses the host driver): the script logs an ERROR, stops Ollama and exits
#      non-zero, so Cloud Run replaces the instance and its logs say why, instead of billing a
#      GPU while the CPU answers. LLM_REQUIRE_GPU=0 turns the check into a warning (CPU hosts).
# A model that fails to load also ends the container. SIGTERM/SIGINT (Cloud Run scale-in) are
# forwarded to Ollama; the script exits when it does.
set -uo pipefail

log() { printf 'llm-entrypoint: %s\n' "$*" >&2; }

if [[ -z "${LLM_MODELS// /}" ]]; then
    log "LLM_MODELS is empty: set it to the space-separated Ollama tags to preload"
    exit 64
fi
SERVER_WAIT_SECONDS="${LLM_SERVER_WAIT_SECONDS:-120}"
LOAD_TIMEOUT_SECONDS="${LLM_LOAD_TIMEOUT_SECONDS:-600}"
GRACE_SECONDS="${LLM_FIRST_REQUEST_GRACE_SECONDS:-5}"
REQUIRE_GPU="${LLM_REQUIRE_GPU:-1}"

# The models to load: "none" marks an unused build slot (Dockerfile.llm).
models=()
for model in $LLM_MODELS; do
    [[ "$model" == none ]] && continue
    if [[ ! "$model" =~ ^[A-Za-z0-9._:/-]+$ ]]; then
        log "ERROR: invalid model name in LLM_MODELS: '$model'"
        exit 64
    fi
    models+=("$model")
done

# Where this script reaches Ollama: OLLAMA_HOST without scheme; a wildcard host means loopback.
hostport="${OLLAMA_HOST:-127.0.0.1:11434}"
hostport="${hostport#*://}"
hostport="${hostport%%/*}"
if [[ "$hostport" == *:* ]]; then
    api_host="${hostport%:*}"
    api_port="${hostport##*:}"
else
    api_host="$hostport"
    api_port=11434
fi
case "$api_host" in "" | 0.0.0.0 | "[::]") api_host=127.0.0.1 ;; esac

ollama_pid=""
stopping=0

on_signal() {
    log "stop requested, stopping ollama"
    stopping=1
    [[ -n "$ollama_pid" ]] && kill -TERM "$ollama_pid" 2>/dev/null
}
trap on_signal TERM INT

# One HTTP/1.0 request over bash's /dev/tcp (the image has no curl). Prints the status code
# ("000" when there is no answer) on its first line and the response body after it.
http_request() { # method path body timeout_seconds
    local method=$1 path=$2 body=$3 timeout=$4 fd status_line status="000" line
    if ! exec {fd}<>"/dev/tcp/${api_host}/${api_port}"; then
        echo "000"
        return 0
    fi 2>/dev/null
    printf '%s %s HTTP/1.0\r\nHost: %s:%s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
        "$method" "$path" "$api_host" "$api_port" "${#body}" "$body" 2>/dev/null 1>&"$fd"
    if IFS= read -r -t "$timeout" status_line <&"$fd"; then
        status="${status_line#* }"
        status="${status%% *}"
        echo "$status"
        while IFS= read -r -t 5 line <&"$fd" && [[ "${line%$'\r'}" != "" ]]; do :; done
        while IFS= read -r -t 5 line <&"$fd" || [[ -n "$line" ]]; do printf '%s\n' "$line"; done
    else
        echo "000"
    fi
    exec {fd}>&-
}

# Runs http_request in the background and waits for it with `wait`, which a trapped signal
# interrupts at once (a blocking $(...) would delay SIGTERM until the model finished loading).
# Sets $reply to the status code and $reply_body to the body.
reply_file="$(mktemp)"
request() { # method path body timeout_seconds
    http_request "$@" >"$reply_file" &
    local request_pid=$!
    wait "$request_pid"
    if ((stopping)); then
        kill "$request_pid" 2>/dev/null
        wait "$request_pid" 2>/dev/null
        reply="000"
        reply_body=""
        return
    fi
    reply="$(head -n 1 "$reply_file")"
    reply="${reply:-000}"
    reply_body="$(tail -n +2 "$reply_file")"
}

# Stop Ollama and exit: 0 when a signal asked for it, 1 after a failure.
finish() {
    local code=$((stopping ? 0 : 1)) # decided before on_signal marks us as stopping
    on_signal 2>/dev/null
    wait "$ollama_pid" 2>/dev/null
    rm -f "$reply_file"
    exit "$code"
}

# /api/ps as lines of "name size size_vram" (the image has no JSON tool; Ollama's reply is
# compact JSON whose entries start with "name" and carry integer "size" and "size_vram").
ps_entries() { # json
    local rest=$1 entry name size vram
    while [[ "$rest" == *'"name":"'* ]]; do
        rest="${rest#*\"name\":\"}"
        name="${rest%%\"*}"
        entry="${rest%%\"name\":\"*}"
        size="?"
        vram="0"
        [[ "$entry" =~ \"size\":([0-9]+) ]] && size="${BASH_REMATCH[1]}"
        [[ "$entry" =~ \"size_vram\":([0-9]+) ]] && vram="${BASH_REMATCH[1]}"
        printf '%s %s %s\n' "$name" "$size" "$vram"
    done
}

# Ollama lists a model as "gemma3:4b"; LLM_MODELS may spell the default tag out or leave it.
same_model() { # listed wanted
    [[ "$1" == "$2" || "$1" == "$2:latest" || "$1:latest" == "$2" ]]
}

ollama serve &
ollama_pid=$!
log "ollama serve started (pid $ollama_pid); waiting for ${api_host}:${api_port}"

deadline=$((SECONDS + SERVER_WAIT_SECONDS))
while true; do
    request GET /api/version "" 2 2>/dev/null
    [[ "$reply" == 200 ]] && break
    ((stopping)) && finish
    if ! kill -0 "$ollama_pid" 2>/dev/null; then
        log "ERROR: ollama serve exited before answering"
        finish
    fi
    if ((SECONDS >= deadline)); then
        log "ERROR: ollama did not answer within ${SERVER_WAIT_SECONDS}s"
        finish
    fi
    sleep 0.25
done
log "ollama answers on port ${api_port}: serving; loading ${models[*]} after ${GRACE_SECONDS}s"

sleep "$GRACE_SECONDS" &
wait $!
((stopping)) && finish

done_models=" "
while true; do
    request GET /api/ps "" "$LOAD_TIMEOUT_SECONDS"
    ((stopping)) && finish
    listed=""
    [[ "$reply" == 200 ]] && listed="$(ps_entries "$reply_body")"
    # Next: a model users already asked for (listed by /api/ps, not checked yet), else the
    # first baked model not loaded yet.
    next=""
    for model in "${models[@]}"; do
        [[ "$done_models" == *" $model "* ]] && continue
        while read -r name _; do
            if [[ -n "$name" ]] && same_model "$name" "$model"; then
                next="$model"
                break 2
            fi
        done <<<"$listed"
    done
    if [[ -z "$next" ]]; then
        for model in "${models[@]}"; do
            [[ "$done_models" == *" $model "* ]] || { next="$model" && break; }
        done
    fi
    [[ -z "$next" ]] && break

    started=$SECONDS
    log "loading $next into memory"
    request POST /api/generate "{\"model\":\"$next\",\"keep_alive\":-1}" "$LOAD_TIMEOUT_SECONDS"
    ((stopping)) && finish
    if [[ "$reply" != 200 ]]; then
        log "ERROR: loading $next failed (HTTP $reply): ${reply_body:0:500}"
        finish
    fi

    request GET /api/ps "" 30
    ((stopping)) && finish
    size=""
    vram=""
    while read -r name entry_size entry_vram; do
        if [[ -n "$name" ]] && same_model "$name" "$next"; then
            size=$entry_size
            vram=$entry_vram
        fi
    done <<<"$(ps_entries "$reply_body")"
    if [[ -z "$size" || "$size" == "?" || "$vram" != "$size" ]]; then
        detail="size=${size:-missing} size_vram=${vram:-missing} (HTTP $reply from /api/ps)"
        if [[ "$REQUIRE_GPU" == 0 ]]; then
            log "warning: $next is not fully in GPU memory: $detail"
        else
            log "ERROR: $next is not fully in GPU memory: $detail. Ollama fell back to the" \
                "CPU: check that this Ollama release supports the host's NVIDIA driver" \
                "(deploy/README.md, 'Which Ollama'; OLLAMA_DEBUG=1 logs the GPU discovery)." \
                "Stopping so that Cloud Run does not bill a GPU for CPU inference."
            finish
        fi
    else
        log "$next loaded in $((SECONDS - started))s, fully in GPU memory ($vram bytes)"
    fi
    done_models+="$next "
done
rm -f "$reply_file"
log "all models loaded: ${models[*]}"

# Serve until a signal arrives or Ollama exits.
while true; do
    wait "$ollama_pid"
    status=$?
    if ((stopping)); then
        wait "$ollama_pid" 2>/dev/null
        exit 0
    fi
    if ! kill -0 "$ollama_pid" 2>/dev/null; then
        log "ERROR: ollama serve exited (status $status)"
        exit 1
    fi
done
