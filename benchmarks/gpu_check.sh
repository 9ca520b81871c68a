#!/usr/bin/env bash
# The whole hardware check of the CUDA path in one go (issue 21), for a machine with an NVIDIA
# GPU that is lent for a few minutes and cannot reach a package registry:
#
#   1. setup    the GPU, the driver and the Python packages there (nvidia-smi, cuda.detect());
#               the package built and installed with its `cuda` extra into a folder of its own
#               (pip --no-index --no-deps: nothing is downloaded), then every requirement
#               checked (name, version, import) and the `retina-np` command run
#   2. tests    tests/cuda on the GPU, not the simulator
#   3. bench    benchmarks/bench_cuda.py --quick --json
#   4. demo     retina-np demo --device cuda --minutes 3
#
# Everything lands in one folder, $OUT when set (else gpu_check_out/ in the repository), as
# seven files: summary.txt, setup.log, tests.log, bench.log, bench.json, demo.log and
# demo.tar.gz (the demo's output folder without its last.npz). Each stage has its own time limit
# and the whole run a budget (GPU_CHECK_BUDGET, default 460 s): a stage that fails or hangs is
# stopped and recorded, the next one runs, and the demo gets 3 minutes or what is left. The
# summary at the end says what passed, with the tests' count, the benchmark's headline numbers
# and the demo's COCO AP. Exit status 0 when every stage passed.
#
#   benchmarks/gpu_check.sh                 # on the GPU machine
#   benchmarks/gpu_check.sh --sim           # a dry run here, on Numba's CUDA simulator
#   benchmarks/gpu_check.sh --fetch-wheels  # here, before: wheels the GPU machine lacks
#
# --sim runs every stage with tiny sizes: the simulator (NUMBA_ENABLE_CUDASIM=1) for a few
# CUDA tests, bench_cuda.py (which only says that the simulator has no timings and writes
# that into bench.json), and a one-minute demo on the CPU (the simulator would need hours for
# one 128x128 training step on the GPU path). It checks the script, not the GPU code.
#
# Packages the GPU machine lacks (pycocotools, for the demo's COCO evaluation) travel as
# wheels: --fetch-wheels downloads them into .whl/ (GPU_CHECK_WHEELS), for the machine's
# Python (GPU_CHECK_PYTHON_VERSION, default 3.12); the setup stage installs every wheel found
# there into the same folder as the package.
#
# Environment: OUT (output folder), PYTHON (default python3: on the GPU machine, the Python
# that has numba-cuda and torch), GPU_CHECK_BUDGET (seconds), GPU_CHECK_DEMO_MINUTES
# (default 3), GPU_CHECK_TESTS (pytest arguments, default tests/cuda), GPU_CHECK_WORKERS (pytest
# processes where pytest-xdist is installed, default 6; 1 under --sim), GPU_CHECK_WHEELS, and
# GPU_CHECK_STAGES (default "tests bench demo"; the setup always runs): a second call can rerun
# only the stages that the first could not finish.

set -u
{ # bash reads the whole block before running it: editing this file during a run is harmless

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
SIM=0
FETCH=0
for arg in "$@"; do
    case $arg in
        --sim) SIM=1 ;;
        --fetch-wheels) FETCH=1 ;;
        -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

PY=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-$REPO/.whl}
# The wheels the GPU machine's Python lacks: pycocotools (COCO metrics; an abi3 wheel).
WHEEL_SPECS=${GPU_CHECK_WHEEL_SPECS:-pycocotools==2.0.11}

if [ "$FETCH" = 1 ]; then
    mkdir -p "$WHEELS"
    version=${GPU_CHECK_PYTHON_VERSION:-3.12}
    # shellcheck disable=SC2086  # WHEEL_SPECS is a list of requirement strings
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$version" \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" $WHEEL_SPECS || exit 1
    ls -l "$WHEELS"
    exit 0
fi

OUT_DIR=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
rm -f "$OUT_DIR"/{summary.txt,setup.log,tests.log,bench.log,bench.json,demo.log,demo.tar.gz}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SITE=$WORK/site  # the installed package and the carried wheels
export PY REPO WORK SITE WHEELS SIM
export MPLBACKEND=Agg PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# One kernel cache for every stage (the CPU kernels are cached; the bench's CPU training step
# fills it for the demo's evaluation).
export NUMBA_CACHE_DIR=$WORK/numba_cache
unset NUMBA_ENABLE_CUDASIM

if [ "$SIM" = 1 ]; then
    BUDGET=${GPU_CHECK_BUDGET:-600}
    DEMO_MINUTES=${GPU_CHECK_DEMO_MINUTES:-1}
    DEMO_SLACK=60  # a cold compile of the CPU kernels takes 30-40 s on two cores
    TESTS=${GPU_CHECK_TESTS:-tests/cuda/test_transfers.py tests/cuda/test_cuda_reduce.py}
    DEMO_ARGS=(--device cpu --train-images 16 --val-images 8 --batch-size 2)
    CUDA_ENV=(NUMBA_ENABLE_CUDASIM=1)
    WORKERS=${GPU_CHECK_WORKERS:-1}
else
    BUDGET=${GPU_CHECK_BUDGET:-460}
    DEMO_MINUTES=${GPU_CHECK_DEMO_MINUTES:-3}
    # Seconds past the demo's own budget before it is stopped: it plans its training around
    # the compile and the evaluation it expects, and the evaluation's first calls compile
    # more (the CPU postprocessing, eval-mode kernels).
    DEMO_SLACK=45
    TESTS=${GPU_CHECK_TESTS:-tests/cuda}
    DEMO_ARGS=(--device cuda)
    CUDA_ENV=(RETINA_NP_GPU=1)  # tests/conftest.py collects tests/cuda only with a GPU or sim
    WORKERS=${GPU_CHECK_WORKERS:-6}
fi
DEADLINE=$((SECONDS + BUDGET))
STAGES="env install ${GPU_CHECK_STAGES:-tests bench demo}"  # setup always runs

RESULTS=()
FAILED=0

# stage NAME LIMIT LOG COMMAND...: run COMMAND under `timeout`, its output appended to LOG.
stage() {
    local name=$1 limit=$2 log=$3
    shift 3
    if [[ " $STAGES " != *" $name "* ]]; then
        RESULTS+=("$(printf '%-8s %-12s %5s' "$name" "not asked" "-")")
        return 1
    fi
    local left=$((DEADLINE - SECONDS))
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        RESULTS+=("$(printf '%-8s %-12s %5s' "$name" SKIPPED "-") (budget spent)")
        FAILED=1
        return 1
    fi
    echo "### $name: $* (limit ${limit} s, $(date -u +%H:%M:%S) UTC)" >>"$log"
    echo "--- $name (limit ${limit} s)"
    local t0=$SECONDS rc status
    timeout -k 10 "$limit" "$@" >>"$log" 2>&1 </dev/null
    rc=$?
    case $rc in
        0) status=passed ;;
        124 | 137) status="TIMED OUT" ;;
        *) status="FAILED rc=$rc" ;;
    esac
    echo "### $name: $status after $((SECONDS - t0)) s" >>"$log"
    RESULTS+=("$(printf '%-8s %-12s %4d s' "$name" "$status" $((SECONDS - t0)))")
    if ((rc != 0)); then
        FAILED=1
        echo "    $status; the end of $(basename "$log"):"
        tail -n 15 "$log" | sed 's/^/    | /'
    fi
    return $rc
}

do_env() {
    date -u
    uname -a
    echo "cpus: $(nproc)"
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    echo "python: $(command -v "$PY") $("$PY" -V 2>&1)"
    "$PY" -m pip list 2>/dev/null | grep -i -E \
        '^(numba|numba-cuda|numpy|scipy|matplotlib|pillow|tqdm|pycocotools|threadpoolctl|pytest|pytest-timeout|torch|cuda-bindings|cuda-core|nvidia-cuda-nvcc|nvidia-cuda-nvrtc|nvidia-nvjitlink) '
    if [ "$SIM" = 1 ]; then
        echo "simulator run: numba.cuda is not asked for a GPU"
        export NUMBA_ENABLE_CUDASIM=1
    else
        "$PY" -c 'import sys; from numba import cuda; sys.exit(0 if cuda.detect() else 1)' ||
            return 1
    fi
    # One kernel compiled (NVVM), loaded and run: what every later stage needs.
    "$PY" - <<'EOF'
import numpy as np
from numba import cuda


@cuda.jit
def add_one(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] += 1.0


d = cuda.to_device(np.arange(1000, dtype=np.float32))
add_one[4, 256](d)
assert (d.copy_to_host() == np.arange(1, 1001, dtype=np.float32)).all()
print("a numba.cuda kernel compiled and ran on",
      getattr(cuda.get_current_device(), "name", "the simulator"))
EOF
}

do_install() {
    set -e
    rm -rf "$SITE" "$WORK/src"
    mkdir -p "$WORK/src"
    # A copy, so the build leaves nothing (build/, *.egg-info) in the checkout.
    cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/retina_np" "$WORK/src/"
    find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
    shopt -s nullglob
    local wheels=("$WHEELS"/*.whl)
    if ((${#wheels[@]})); then
        echo "carried wheels: ${wheels[*]##*/}"
        "$PY" -m pip install --no-index --no-deps --no-compile --upgrade --target "$SITE" \
            "${wheels[@]}"
    else
        echo "no wheels in $WHEELS (make them with benchmarks/gpu_check.sh --fetch-wheels)"
    fi
    "$PY" -c 'import setuptools; print("setuptools", setuptools.__version__)'
    # --no-deps: the registry cannot be reached; the requirements are checked just below.
    "$PY" -m pip install --no-index --no-deps --no-build-isolation --no-compile --upgrade \
        --target "$SITE" "$WORK/src[cuda]"
    # Every requirement of the package and of its cuda extra: installed, recent enough, and
    # importable; and the package is the one just installed (run from $WORK: not the checkout).
    cd "$WORK"
    PYTHONPATH=$SITE "$PY" - <<'EOF'
import importlib
import importlib.metadata as md
import os
import sys

from packaging.requirements import Requirement

import retina_np

site = os.environ["SITE"]
print(f"retina_np {md.version('retina_np')} from {os.path.dirname(retina_np.__file__)}")
assert retina_np.__file__.startswith(site), "retina_np was not imported from the install"
modules = {"pillow": "PIL", "numba-cuda": "numba.cuda", "pycocotools": "pycocotools.cocoeval"}
bad = []
for line in md.requires("retina_np"):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": "cuda"}):
        continue  # the dev and docs extras
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        bad.append(f"{req.name}: not installed")
        print(f"MISSING {req.name} (wants {req.specifier or 'any'})")
        continue
    ok = req.specifier.contains(version, prereleases=True)
    try:
        importlib.import_module(modules.get(req.name.lower(), req.name.replace("-", "_")))
    except Exception as exc:  # an installed package that does not import is no better
        ok = False
        version += f", import fails: {type(exc).__name__}: {exc}"
    print(f"{'ok ' if ok else 'BAD'} {req.name} {version} (wants {req.specifier or 'any'})")
    if not ok:
        bad.append(f"{req.name} {version}")
sys.exit(f"requirements not met: {'; '.join(bad)}" if bad else 0)
EOF
    PYTHONPATH=$SITE "$SITE/bin/retina-np" demo --help >/dev/null
    echo "retina-np: $SITE/bin/retina-np runs"
}
export -f do_env do_install

start_time=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "gpu_check: $([ "$SIM" = 1 ] && echo "SIMULATOR dry run" || echo "GPU run"), budget ${BUDGET} s, output in $OUT_DIR"

# 1. setup
stage env 20 "$OUT_DIR/setup.log" bash -c do_env
INSTALLED=0
stage install 60 "$OUT_DIR/setup.log" bash -c do_install && INSTALLED=1
# The later stages run the checkout's own files (the same files as the install; one kernel
# cache for all of them), with the install's folder behind it for the carried wheels.
RUN_PATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}
if [ "$INSTALLED" = 1 ]; then
    RNP=("$SITE/bin/retina-np")
else
    RNP=("$PY" -m retina_np.cli)
fi

# 2. the CUDA tests (a time limit per test too, where pytest-timeout is there)
# -v: a line per test, so a run stopped by its time limit shows how far it got (and, in one
# process, which test hung; pytest-timeout prints the stack of a test that outlives its limit).
TEST_ARGS=(-v -p no:cacheprovider -rfEs --durations=10)
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then TEST_ARGS+=(--timeout=100); fi
# Compiling the kernels is most of the tests' time on a GPU, one CPU core per process: several
# pytest processes (pytest-xdist) share it out.
if ((WORKERS > 1)) && "$PY" -c 'import xdist' 2>/dev/null; then TEST_ARGS+=(-n "$WORKERS"); fi
# shellcheck disable=SC2086  # TESTS is a list of pytest arguments
if stage tests 170 "$OUT_DIR/tests.log" \
    env "${CUDA_ENV[@]}" PYTHONPATH="$RUN_PATH" "$PY" -m pytest "${TEST_ARGS[@]}" $TESTS &&
    ! grep -q -E '^=+ .*[0-9]+ passed' "$OUT_DIR/tests.log"; then
    # tests/cuda skips everything where numba.cuda finds no GPU: that is no pass
    RESULTS[-1]="${RESULTS[-1]/passed/FAILED} (rc 0, but no test passed)"
    FAILED=1
fi

# 3. the benchmark
stage bench 120 "$OUT_DIR/bench.log" \
    env "${CUDA_ENV[@]}" PYTHONPATH="$RUN_PATH" "$PY" benchmarks/bench_cuda.py --quick \
    --json "$OUT_DIR/bench.json"

# 4. the demo: DEMO_MINUTES, or what the budget has left
minutes=$(awk -v want="$DEMO_MINUTES" -v left=$((DEADLINE - SECONDS - DEMO_SLACK)) \
    'BEGIN { m = left / 60; if (m > want) m = want; printf "%.2f", (m > 0 ? m : 0) }')
if awk -v m="$minutes" 'BEGIN { exit !(m >= 0.5) }'; then
    demo_limit=$(awk -v m="$minutes" -v s=$DEMO_SLACK 'BEGIN { printf "%d", m * 60 + s }')
    stage demo "$demo_limit" "$OUT_DIR/demo.log" \
        env PYTHONPATH="$RUN_PATH" "${RNP[@]}" demo "${DEMO_ARGS[@]}" --minutes "$minutes" \
        --out "$WORK/demo_out"
    if [ -d "$WORK/demo_out" ]; then
        tar -czf "$OUT_DIR/demo.tar.gz" -C "$WORK" --exclude=last.npz demo_out
        # final.npz (with the optimiser's state) is most of it; files of over 16 MiB may not
        # come back from a lent machine
        if (($(stat -c %s "$OUT_DIR/demo.tar.gz") > 15 * 1024 * 1024)); then
            tar -czf "$OUT_DIR/demo.tar.gz" -C "$WORK" --exclude='*.npz' demo_out
        fi
    fi
elif [[ " $STAGES " == *" demo "* ]]; then
    RESULTS+=("$(printf '%-8s %-12s %5s' demo SKIPPED "-") (${minutes} min left)")
    FAILED=1
else
    RESULTS+=("$(printf '%-8s %-12s %5s' demo "not asked" "-")")
fi

# Summary: what passed, and the numbers that matter.
{
    echo "gpu_check $([ "$SIM" = 1 ] && echo "(SIMULATOR dry run)" || echo "(GPU)"), started $start_time, $((SECONDS)) s in all"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    for line in "${RESULTS[@]}"; do echo "  $line"; done
    echo "install: $([ "$INSTALLED" = 1 ] && echo "ok, ${RNP[*]}" || echo "FAILED: ran from the checkout with ${RNP[*]}")"
    if [ -f "$OUT_DIR/tests.log" ]; then
        line=$(grep -E '^=+ .*(passed|failed|error|skipped|no tests ran).* =+$' "$OUT_DIR/tests.log" | tail -n 1)
        echo "tests: ${line:-no pytest summary line (stopped?): see tests.log}"
    else
        echo "tests: not run"
    fi
    "$PY" - "$OUT_DIR/bench.json" "$WORK/demo_out/summary.json" <<'EOF'
import json
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"missing": "no file (not run, or stopped before it wrote one)"}
    except (OSError, ValueError) as exc:
        return {"missing": f"{path}: {exc}"}


bench, demo = load(sys.argv[1]), load(sys.argv[2])
if "ceilings" in bench:
    c = bench["ceilings"]
    print(f"bench: {c['device']} sm_{c['cc'][0]}{c['cc'][1]}: float32 peak "
          f"{c['peak_gflops_fp32']:.0f} GFLOP/s, copy {c['copy_gbs']:.0f} GB/s")
    for row in bench.get("convs", []):
        print(f"  {row['shape']:22s} " + "  ".join(
            f"{k} {100 * row[k + '_of_peak']:4.1f}%" for k in ("fwd", "bwd_input", "bwd_weight")))
    step = bench.get("train_step", {})
    if step:
        print("  training step: " + ", ".join(
            f"{d} {v * 1e3:.1f} ms" if isinstance(v, float) else f"{d}: {v[:120]}"
            for d, v in step.items()))
    print(f"  torch: {'ran' if bench.get('torch') else 'did not run'}")
else:
    print(f"bench: {bench.get('skipped') or bench.get('missing')}")
if "AP" in demo:
    print(f"demo: AP {demo['AP']:.3f}  AP50 {demo['AP50']:.3f}  AP75 {demo['AP75']:.3f} after "
          f"{demo['train_steps']} steps ({demo['seconds_per_step'] * 1e3:.0f} ms each), "
          f"{demo['wall_seconds']:.0f} s")
else:
    print(f"demo: no summary ({demo.get('missing')})")
EOF
    echo "files: $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
} 2>&1 | tee "$OUT_DIR/summary.txt"

exit $FAILED
}
