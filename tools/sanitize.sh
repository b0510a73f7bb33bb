#!/usr/bin/env bash
# Build fastdl._C with AddressSanitizer and UndefinedBehaviorSanitizer (the CMake option FASTDL_SANITIZE)
# into a prefix of its own, and run the kernel tests against that build: any out-of-bounds access,
# misaligned pointer or other undefined behaviour a test reaches stops the run with a report.
#
#   tools/sanitize.sh                 the kernel test files below
#   tools/sanitize.sh tests/x.py ...  these instead (any pytest arguments)
#
# Runs in the current Python environment, which needs the test dependencies (pip install ".[test]").
# FASTDL_SANITIZE_DIR: where to build and install (default: a new temporary directory); given again,
# the build is incremental. CXX: the compiler (default c++), whose libasan is preloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${FASTDL_SANITIZE_DIR:-}" ]; then
  work="$FASTDL_SANITIZE_DIR"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
prefix="$work/prefix"
runtime() {  # the compiler's own copy of a runtime library, by its real path
  local p
  p="$("${CXX:-c++}" -print-file-name="$1")"
  if [ ! -e "$p" ]; then
    echo "sanitize.sh: ${CXX:-c++} has no $1 (got '$p')" >&2
    exit 2
  fi
  readlink -f "$p"
}
libasan="$(runtime libasan.so)"
libstdcxx="$(runtime libstdc++.so)"

# Build deps from this environment when it has them (no download), else pip's isolated build.
isolation=()
if python -c "import scikit_build_core, pybind11" 2>/dev/null; then isolation=(--no-build-isolation); fi
pip install --quiet --no-deps --upgrade --target "$prefix" "${isolation[@]}" \
  -Ccmake.define.FASTDL_SANITIZE=ON -Cbuild-dir="$work/build" .

tests=(tests/test_gemm.py tests/test_linear.py tests/test_activations.py tests/test_losses.py
       tests/test_dropout.py tests/test_batchnorm.py tests/test_optim_kernels.py tests/test_misaligned.py
       tests/test_bindings.py tests/test_conv.py tests/test_pool.py tests/test_batchnorm2d.py tests/test_dropout2d.py)
if [ $# -gt 0 ]; then tests=("$@"); fi

# Python is not instrumented: the ASan runtime must be loaded before anything else, and libstdc++ with
# it (Python does not link it, and ASan's __cxa_throw interceptor looks for the real one only as it
# starts: without it every C++ exception, so every ValueError a binding raises, aborts). Python's leaks
# at exit are not fastdl's; PYTHONMALLOC=malloc lets ASan see Python's own allocations too.
export PYTHONPATH="$prefix${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$libasan:$libstdcxx${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:print_summary=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONMALLOC=malloc

# The tests must import the sanitized build, not an installed one (checked outside the repository,
# whose fastdl/ has no _C).
module="$(cd "$work" && python -c "import fastdl._C as c; print(c.__file__)")"
case "$module" in
  "$prefix"/*) echo "sanitize.sh: testing $module" ;;
  *) echo "sanitize.sh: imported $module, not the sanitized build in $prefix" >&2; exit 2 ;;
esac
# --capture=sys: a sanitizer writes its report to file descriptor 2, which the default capture would swallow
pytest -q -p no:cacheprovider --capture=sys "${tests[@]}"
