#!/usr/bin/env bash
# Developer build: compiles the extension with CMake into BUILD_DIR (default build/dev) and copies
# fastdl/_C*.so into the source tree, so that `python -m pytest` from the checkout tests this tree.
# Users and CI install with `pip install .` instead (README).
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build/dev}"
py="$(command -v python)"
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$py" \
        -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DSKBUILD_PROJECT_VERSION="$("$py" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')" >/dev/null
fi
cmake --build "$build" -j 2
# copy, then rename: a process that has the old module loaded keeps its file (a copy over it would crash it)
for so in "$build"/_C*.so; do
  cp "$so" "fastdl/.$(basename "$so").tmp" && mv -f "fastdl/.$(basename "$so").tmp" "fastdl/$(basename "$so")"
done
