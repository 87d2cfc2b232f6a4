#!/usr/bin/env bash
# Entrypoint of the GPU image (Dockerfile.llm).
#
# Ollama opens its port long before a model is in GPU memory, so a TCP startup probe on the
# serving port passes too early and the first requests would silently wait for model loads.
# This script makes "ready" mean "every baked model is resident":
#   1. start `ollama serve` (it listens on $OLLAMA_HOST, the Cloud Run container port 8080);
#   2. load each model of $LLM_MODELS with an empty /api/generate request and keep_alive -1
#      (Ollama's documented preload; the reply comes once the model is loaded);
#   3. only then answer `GET /ready` with 200 on $LLM_READY_PORT (8081). The Cloud Run startup
#      probe polls that port (deploy/deploy.py), so Cloud Run routes requests to this instance
#      only after step 2. Port 8081 is never reachable from outside: Cloud Run forwards traffic
#      to the container port only.
# A model that fails to load makes the container exit non-zero: Cloud Run then reports a failed
# start instead of routing users to an instance that cannot serve them.
# SIGTERM/SIGINT (Cloud Run scale-in) are forwarded to Ollama; the script exits when it does.
set -uo pipefail

log() { printf 'llm-entrypoint: %s\n' "$*" >&2; }

if [[ -z "${LLM_MODELS:-}" ]]; then
    log "LLM_MODELS is empty: set it to the space-separated Ollama tags to preload"
    exit 64
fi
READY_PORT="${LLM_READY_PORT:-8081}"
SERVER_WAIT_SECONDS="${LLM_SERVER_WAIT_SECONDS:-120}"
LOAD_TIMEOUT_SECONDS="${LLM_LOAD_TIMEOUT_SECONDS:-600}"

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
ready_pid=""
stopping=0

stop_children() {
    stopping=1
    for pid in "$ollama_pid" "$ready_pid"; do
        [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null
    done
}
on_signal() {
    log "stop requested, stopping ollama"
    stop_children
}
trap on_signal TERM INT

# One HTTP/1.0 request over bash's /dev/tcp (the image has no curl). Prints the status code
# ("000" when there is no answer) on stdout and the response body on stderr when it is an error.
http_request() { # method path body timeout_seconds
    local method=$1 path=$2 body=$3 timeout=$4 fd status_line status="000" line
    if ! exec {fd}<>"/dev/tcp/${api_host}/${api_port}"; then
        echo "000"
        return 0
    fi 2>/dev/null
    printf '%s %s HTTP/1.0\r\nHost: %s:%s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
        "$method" "$path" "$api_host" "$api_port" "${#body}" "$body" >&"$fd" 2>/dev/null
    if IFS= read -r -t "$timeout" status_line <&"$fd"; then
        status="${status_line#* }"
        status="${status%% *}"
        if [[ "$status" != 2* ]]; then
            # Skip headers, then pass the error body (Ollama's {"error": ...}) to the log.
            while IFS= read -r -t 5 line <&"$fd" && [[ "${line%$'\r'}" != "" ]]; do :; done
            while IFS= read -r -t 5 line <&"$fd"; do printf '%s\n' "$line" >&2; done
        fi
    fi
    exec {fd}>&-
    echo "$status"
}

# Runs http_request in the background and waits for it with `wait`, which a trapped signal
# interrupts at once (a blocking $(...) would delay SIGTERM until the model finished loading).
# Sets $reply to the status code.
reply_file="$(mktemp)"
request() { # method path body timeout_seconds
    http_request "$@" >"$reply_file" &
    local request_pid=$!
    wait "$request_pid"
    if ((stopping)); then
        kill "$request_pid" 2>/dev/null
        wait "$request_pid" 2>/dev/null
        reply="000"
        return
    fi
    reply="$(<"$reply_file")"
    reply="${reply:-000}"
}

# Stop after a failure before readiness: stop Ollama, then exit (0 when a signal asked for it).
give_up() {
    local code=$((stopping ? 0 : 1)) # decided before stop_children marks us as stopping
    stop_children
    wait "$ollama_pid" 2>/dev/null
    rm -f "$reply_file"
    exit "$code"
}

ollama serve &
ollama_pid=$!
log "ollama serve started (pid $ollama_pid); waiting for ${api_host}:${api_port}"

deadline=$((SECONDS + SERVER_WAIT_SECONDS))
while true; do
    request GET /api/version "" 2 2>/dev/null
    [[ "$reply" == 200 ]] && break
    if ((stopping)); then
        give_up
    fi
    if ! kill -0 "$ollama_pid" 2>/dev/null; then
        log "ollama serve exited before answering"
        give_up
    fi
    if ((SECONDS >= deadline)); then
        log "ollama did not answer within ${SERVER_WAIT_SECONDS}s"
        give_up
    fi
    sleep 0.25
done

for model in $LLM_MODELS; do
    if [[ ! "$model" =~ ^[A-Za-z0-9._:/-]+$ ]]; then
        log "invalid model name in LLM_MODELS: '$model'"
        give_up
    fi
    started=$SECONDS
    log "loading $model into memory"
    request POST /api/generate "{\"model\":\"$model\",\"keep_alive\":-1}" "$LOAD_TIMEOUT_SECONDS"
    if ((stopping)); then
        give_up
    fi
    if [[ "$reply" != 200 ]]; then
        log "loading $model failed (HTTP $reply); not reporting ready"
        give_up
    fi
    log "$model loaded in $((SECONDS - started))s"
done
rm -f "$reply_file"

# The readiness answer: a tiny HTTP responder (perl-base is part of every Ubuntu image).
perl -MIO::Socket::INET -e '
    my $port = shift;
    my $server = IO::Socket::INET->new(
        LocalAddr => "0.0.0.0", LocalPort => $port, Proto => "tcp", Listen => 16, ReuseAddr => 1,
    ) or die "llm-entrypoint: cannot listen on port $port: $!\n";
    while (1) {
        my $client = $server->accept or next;
        eval {
            local $SIG{ALRM} = sub { die "timeout\n" };
            alarm 5;
            while (defined(my $line = <$client>)) { last if $line =~ /^\r?\n\z/ }
            alarm 0;
        };
        print {$client} "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
            . "Connection: close\r\n\r\nready\n";
        close $client;
    }
' "$READY_PORT" &
ready_pid=$!
log "all models loaded; answering GET /ready on port $READY_PORT"

# Serve until a signal arrives or either child exits; then stop the other one.
while true; do
    wait -n
    child_status=$?
    if ((stopping)); then
        break
    fi
    if ! kill -0 "$ollama_pid" 2>/dev/null; then
        log "ollama serve exited (status $child_status)"
        break
    fi
    if ! kill -0 "$ready_pid" 2>/dev/null; then
        log "readiness responder exited (status $child_status)"
        break
    fi
done
was_stopping=$stopping
stop_children
wait "$ollama_pid" 2>/dev/null
wait "$ready_pid" 2>/dev/null
if ((was_stopping)); then
    exit 0
fi
exit 1
