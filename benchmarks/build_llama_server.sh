#!/usr/bin/env bash
# Build llama.cpp's own C++ HTTP server (`llama-server`) from the llama.cpp
# sources vendored in the llama-cpp-python sdist that matches the installed
# llama-cpp-python version, so HTTP-side measurements can be compared with the
# server's own `timings` fields against the same llama.cpp revision.
#
# Usage:
#   benchmarks/build_llama_server.sh [path/to/llama_cpp_python-X.Y.Z.tar.gz]
#
# Without an argument the sdist is fetched from PyPI with
#   pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==<installed>
# (only llama-cpp-python itself is forced to the sdist; its build backend may
# come from wheels, which makes pip's metadata step much faster than :all:)
# The binary is installed (statically linked against llama/ggml; CPU only, no
# curl/openssl, no web UI) to
#   ${MLXPERF_CACHE_DIR:-$HOME/.cache/pytest-mlxperf}/llama-server/<version>/llama-server
# and that path is printed as the last line of output. If the binary already
# exists the script prints the path and exits 0 without building.
#
# Environment:
#   PYTHON            interpreter with llama-cpp-python installed (default: python)
#   MLXPERF_CACHE_DIR cache root (default: ~/.cache/pytest-mlxperf)
#   JOBS              parallel build jobs (default: 2)
#   KEEP_BUILD_DIR=1  keep the temporary source/build directory
set -euo pipefail

die() { echo "build_llama_server.sh: error: $*" >&2; exit 1; }
log() { echo "build_llama_server.sh: $*" >&2; }

PYTHON="${PYTHON:-python}"
JOBS="${JOBS:-2}"
SDIST="${1:-}"

command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '$PYTHON' not found (set PYTHON=...)"

VERSION="$("$PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null)" \
    || die "cannot import llama_cpp with '$PYTHON'; install llama-cpp-python first (or set PYTHON=...)"
[[ -n "$VERSION" ]] || die "llama_cpp.__version__ is empty"

CACHE_ROOT="${MLXPERF_CACHE_DIR:-$HOME/.cache/pytest-mlxperf}"
DEST_DIR="$CACHE_ROOT/llama-server/$VERSION"
DEST="$DEST_DIR/llama-server"

if [[ -x "$DEST" ]]; then
    log "already built for llama-cpp-python $VERSION"
    echo "$DEST"
    exit 0
fi

command -v cmake >/dev/null 2>&1 || die "cmake not found on PATH"
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 \
    || die "no C++ compiler (c++/g++/clang++) found on PATH"
command -v tar >/dev/null 2>&1 || die "tar not found on PATH"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")"
cleanup() {
    if [[ "${KEEP_BUILD_DIR:-0}" == "1" ]]; then
        log "keeping build directory $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

if [[ -n "$SDIST" ]]; then
    [[ -f "$SDIST" ]] || die "sdist tarball '$SDIST' does not exist"
    case "$(basename "$SDIST")" in
        *"$VERSION"*) ;;
        *) log "warning: '$SDIST' does not look like version $VERSION (installed); building it anyway" ;;
    esac
else
    log "downloading llama-cpp-python==$VERSION sdist from the package index"
    "$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        -d "$WORK/dl" "llama-cpp-python==$VERSION" >&2 \
        || die "pip download of llama-cpp-python==$VERSION sdist failed"
    SDIST="$(find "$WORK/dl" -maxdepth 1 -name 'llama_cpp_python-*.tar.gz' -print -quit)"
    [[ -n "$SDIST" ]] || die "pip download produced no llama_cpp_python-*.tar.gz in $WORK/dl"
fi

log "extracting $SDIST"
mkdir -p "$WORK/src"
tar -xzf "$SDIST" -C "$WORK/src" || die "failed to extract $SDIST"
LLAMA_DIR="$(find "$WORK/src" -mindepth 3 -maxdepth 3 -type d -path '*/vendor/llama.cpp' -print -quit)"
[[ -n "$LLAMA_DIR" && -f "$LLAMA_DIR/CMakeLists.txt" ]] \
    || die "no vendor/llama.cpp/CMakeLists.txt inside $SDIST (not a llama-cpp-python sdist?)"
[[ -d "$LLAMA_DIR/tools/server" ]] || die "vendored llama.cpp in $SDIST has no tools/server directory"

GENERATOR=()
if command -v ninja >/dev/null 2>&1; then
    GENERATOR=(-G Ninja)
fi

BUILD="$WORK/build"
log "configuring llama.cpp (CPU only, static, no curl/openssl/web UI)"
cmake -S "$LLAMA_DIR" -B "$BUILD" ${GENERATOR[@]+"${GENERATOR[@]}"} \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_RPC=OFF \
    -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_COMMON=ON \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    >&2 || die "cmake configure failed (see output above)"

log "building target llama-server with $JOBS jobs (this takes several minutes)"
start=$(date +%s)
cmake --build "$BUILD" --config Release --target llama-server -j "$JOBS" >&2 \
    || die "cmake build of llama-server failed (see output above)"
log "build finished in $(( $(date +%s) - start ))s"

BIN="$(find "$BUILD" -type f -name llama-server -perm -u+x -print -quit)"
[[ -n "$BIN" ]] || die "build succeeded but no llama-server executable was found under $BUILD"

# Static build: the binary should not need any library from the build tree.
if command -v ldd >/dev/null 2>&1; then
    if ldd "$BIN" 2>/dev/null | grep -E "=> not found|$BUILD" >&2; then
        die "llama-server links against libraries from the build tree or missing libraries (see above)"
    fi
fi

mkdir -p "$DEST_DIR"
install -m 0755 "$BIN" "$DEST.tmp.$$"
mv -f "$DEST.tmp.$$" "$DEST"
"$DEST" --version >&2 2>&1 || log "warning: '$DEST --version' exited non-zero"
echo "$DEST"
