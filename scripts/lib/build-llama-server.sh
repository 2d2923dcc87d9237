#!/usr/bin/env bash
# Builds llama.cpp's own llama-server (plus llama-quantize, llama-perplexity) from the llama.cpp
# vendored in the llama-cpp-python sdist the service pins, with the service's portable CMake flags,
# so the "peer" server in the benchmark runs the very same ggml/llama code with the same codegen.
#
# Idempotent: the binaries are cached, like the wheel in scripts/lib/env.sh, under
#   $CACHE_DIR/llama-server/llama-cpp-python-$VERSION-$KEY/bin/
# where KEY hashes the version, the service's flags, the peer flags, the targets and the arch.
# Prints that bin directory on stdout (logs go to stderr).
#
# Environment (all optional):
#   APP_BUILD_CACHE / XDG_CACHE_HOME  cache root, as in env.sh (default ~/.cache/llm-service)
#   LLAMA_CMAKE_ARGS  override the service flags (default: the args file below)
#   LLAMA_ARGS_FILE   the service's args file (default: llama-cmake-args beside this script)
#   PEER_TARGETS      cmake targets (default: llama-server llama-quantize llama-perplexity)
#   JOBS              parallel jobs (default: nproc)
#   PYTHON            interpreter whose pip fetches the sdist (default python3)
#   KEEP_BUILD=1      keep the build tree (next to the cache dir, *.build) after success
set -euo pipefail

LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
SDIST_SHA256_0_3_36="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
ARGS_FILE="${LLAMA_ARGS_FILE:-$(dirname "$0")/llama-cmake-args}"
CACHE_DIR="${APP_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-service}"
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:-$(cat "$ARGS_FILE")}"
PEER_TARGETS="${PEER_TARGETS:-llama-server llama-quantize llama-perplexity}"
JOBS="${JOBS:-$(nproc)}"

# Added after the service flags (later -D wins): turn the server/tools back on, keep everything
# offline (no HF download of the web UI, no npm, no curl/openssl), and link statically so the
# cached binaries are relocatable (the wheel links ggml as shared libs; codegen flags are equal).
PEER_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
-DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
-DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF"

log() { printf '[build-llama-server] %s\n' "$*" >&2; }

case " $LLAMA_CMAKE_ARGS " in
    *march=native*|*"GGML_NATIVE=ON"*) log "refusing native flags: $LLAMA_CMAKE_ARGS"; exit 1 ;;
esac

KEY="$(printf '%s|%s|%s|%s|%s' "$LLAMA_CPP_VERSION" "$LLAMA_CMAKE_ARGS" "$PEER_CMAKE_ARGS" \
    "$PEER_TARGETS" "$(uname -m)" | sha256sum | cut -c1-16)"
DIR="$CACHE_DIR/llama-server/llama-cpp-python-$LLAMA_CPP_VERSION-$KEY"

complete() {
    local t
    for t in $PEER_TARGETS; do [[ -x "$DIR/bin/$t" ]] || return 1; done
}

if complete; then
    log "cached: $DIR"
    echo "$DIR/bin"
    exit 0
fi

# one builder at a time per key; a second caller waits, then finds the cache filled
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock 9
if complete; then
    log "cached (built by a concurrent run): $DIR"
    echo "$DIR/bin"
    exit 0
fi

WORK="$DIR.build"
rm -rf "$WORK" && mkdir -p "$WORK"
log "building $PEER_TARGETS from llama-cpp-python $LLAMA_CPP_VERSION's vendored llama.cpp in $WORK"

# 1. the sdist (the exact source the wheel is built from)
"${PYTHON:-python3}" -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
    "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$WORK"
SDIST="$(ls "$WORK"/llama_cpp_python-"$LLAMA_CPP_VERSION".tar.gz)"
if [[ "$LLAMA_CPP_VERSION" == 0.3.36 && "$(sha256sum "$SDIST" | cut -d' ' -f1)" != "$SDIST_SHA256_0_3_36" ]]; then
    log "sdist sha256 mismatch"; exit 1
fi
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"

# 2. configure + build only the wanted targets
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
# shellcheck disable=SC2086  # the flag strings are word lists on purpose
( set -x; cmake -S "$SRC" -B "$WORK/build" "${GEN[@]}" $LLAMA_CMAKE_ARGS $PEER_CMAKE_ARGS ) >&2
start=$(date +%s)
# shellcheck disable=SC2086
( set -x; cmake --build "$WORK/build" --config Release -j "$JOBS" --target $PEER_TARGETS ) >&2
log "build took $(( $(date +%s) - start ))s"

# 3. publish atomically
mkdir -p "$WORK/out/bin"
for t in $PEER_TARGETS; do cp "$WORK/build/bin/$t" "$WORK/out/bin/"; done
{
    echo "llama-cpp-python $LLAMA_CPP_VERSION (vendored llama.cpp, see CHANGELOG)"
    echo "service flags: $LLAMA_CMAKE_ARGS"
    echo "peer flags:    $PEER_CMAKE_ARGS"
    echo "targets:       $PEER_TARGETS"
    "$WORK/out/bin/llama-server" --version 2>&1 || true
} >"$WORK/out/BUILD-INFO"
rm -rf "$DIR" && mv "$WORK/out" "$DIR"
[[ "${KEEP_BUILD:-0}" == 1 ]] || rm -rf "$WORK"
log "done: $DIR/bin"
echo "$DIR/bin"
