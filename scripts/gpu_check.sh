#!/usr/bin/env bash
# The GPU regression check: one command, unattended, about 7 minutes on one GPU (an estimate: no GPU
# has run it yet); run it after a change that touches training whenever a GPU is at hand. It ends
# with ONE verdict line,
#   gpu_check: PASS <device> in <s> s: <what each step measured>
#   gpu_check: FAIL <what failed> (<device>, <s> s; details in <dir>)
# (exit status 0 for PASS, 1 for FAIL) and writes its details under ${OUT:-gpu_check_out}/.
#
#   scripts/gpu_check.sh                      on cuda (the default; the tests use cuda:0, so pick a GPU
#                                             with CUDA_VISIBLE_DEVICES rather than --device cuda:N)
#   scripts/gpu_check.sh --record             record this GPU's expected values (step 4) anew
#   scripts/gpu_check.sh --only 2,4           some steps only (a rerun)
#   scripts/gpu_check.sh --device cpu --tiny  the whole script at smoke size on the CPU (under a minute)
#
# Steps, in this order (docs/performance.md, "GPU"):
#   1. pytest -m gpu over the test files that have GPU tests: every model trains on CUDA, the
#      sync-free check of every model (tests/test_sync.py), bf16, evaluation on CUDA, ...
#   2. SIGKILL-and-resume on CUDA, bitwise, for the MLP and conv64 networks: the tests
#      test_sigkill_at_a_random_step_then_resume_is_bitwise[*-cuda] (run in step 1; on their own
#      with --only 2), reported on their own line
#   3. gatedvae bench --device DEV --quick --only train at fp32, tf32 and bf16 (images/s per row)
#   4. the quickstart's gated beta-VAE at fp32 and bf16 on a shortened budget, fixed seed: losses at
#      the logged steps, DCI and MIG, images/s, against scripts/gpu_expected.json (scripts/gpu_check.py;
#      with no values recorded for this GPU it records them and says so, which is not a failure)
#   5. gatedvae bench --device DEV --only ensemble (--quick with --tiny): one run, the loop and the
#      stacked ensemble (K = 32 at hidden 256, K = 10 at hidden 1200 on a GPU), ms per step, x one
#      run, the projected wall time of the paper's 288,000 steps, and issue 18's two GPU targets
#      (reported; the step fails only when the section does not run)
#
# Python: $PYTHON if set, else the first of python3 and .venv/bin/python that has torch (and, for
# cuda, sees a CUDA device); src/ goes first on PYTHONPATH, so no install is needed.
# Time limits per step (seconds): GPU_CHECK_T_TESTS (300), GPU_CHECK_T_BENCH (120), GPU_CHECK_T_FIXED
# (150), GPU_CHECK_T_ENSEMBLE (240). The expected-values file: GPU_CHECK_EXPECTED (default scripts/gpu_expected.json).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD

DEVICE=cuda
TINY=0
RECORD=0
ONLY=1,2,3,4,5
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEVICE=${2:-}; shift 2 || shift ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    --only) ONLY=${2:-}; shift 2 || shift ;;
    --only=*) ONLY=${1#*=}; shift ;;
    --tiny) TINY=1; shift ;;
    --record) RECORD=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check: FAIL unknown argument '$1' (use --device DEV, --tiny, --record, --only 1,2,3,4,5)"; exit 2 ;;
  esac
done
[[ -n $DEVICE ]] || { echo "gpu_check: FAIL --device needs a value (cuda, cuda:N or cpu)"; exit 2; }
[[ $ONLY =~ ^[1-5](,[1-5])*$ ]] || { echo "gpu_check: FAIL --only takes steps 1-5, e.g. --only 2,4"; exit 2; }
want() { [[ ,$ONLY, == *,$1,* ]]; }

OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT" || { echo "gpu_check: FAIL cannot create $OUT"; exit 1; }
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
: >"$LOG"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
T_TESTS=${GPU_CHECK_T_TESTS:-300}
T_BENCH=${GPU_CHECK_T_BENCH:-120}
T_FIXED=${GPU_CHECK_T_FIXED:-150}
T_ENSEMBLE=${GPU_CHECK_T_ENSEMBLE:-240}
START=$SECONDS
FAILS=()
REPORT=()

say() { echo "$*" | tee -a "$LOG"; }
joined() { local out="" part; for part in "$@"; do out+="${out:+; }$part"; done; echo "$out"; }
verdict() { # the one verdict line, also saved in the log and verdict.txt; then exit
  local line="gpu_check: $1"
  echo "$line" >>"$LOG"
  echo "$line" >"$OUT/verdict.txt"
  echo "$line"
  [[ $1 == PASS* ]] && exit 0
  exit 1
}
field() { # field FILE KEY: KEY of the JSON line a scripts/gpu_check.py command ends with (for summary:
  # the last line itself when that is not JSON, e.g. a traceback's)
  "$PY" -c '
import json, sys
lines = open(sys.argv[1]).read().splitlines() or [""]
try:
    print(json.loads(lines[-1]).get(sys.argv[2], ""))
except ValueError:
    print(lines[-1][:300] if sys.argv[2] == "summary" else "")' "$1" "$2" 2>/dev/null
}
details() { grep -v '^{' "$1" | tail -n "${2:-20}" | tee -a "$LOG"; } # what a step printed, minus its JSON
# bench_step STEP NAME SUMMARY LIMIT FILE ARGS...: gatedvae bench ARGS into OUT/FILE.json (log OUT/FILE.log),
# then scripts/gpu_check.py SUMMARY of it; reports the summary (or the exit), a failure when either failed
bench_step() {
  local step=$1 name=$2 summary=$3 limit=$4 file=$5 rc src s
  shift 5
  say "[$step] gatedvae bench $*"
  timeout "$limit" "$PY" -m gatedvae bench "$@" --out "$OUT/$file.json" >"$OUT/$file.log" 2>&1
  rc=$?
  "$PY" scripts/gpu_check.py "$summary" "$OUT/$file.json" >"$OUT/${file}_summary.txt" 2>&1
  src=$?
  details "$OUT/${file}_summary.txt" 40
  s=$(field "$OUT/${file}_summary.txt" summary)
  [[ $rc -ne 0 ]] && s="exit $rc: $(tail -n 1 "$OUT/$file.log")"
  [[ $rc -eq 124 ]] && s="timed out after $limit s"
  say "[$step] $name: $s"
  [[ $rc -ne 0 || $src -ne 0 ]] && FAILS+=("$name: $s")
  REPORT+=("$name $s")
}

# ---- the Python that runs it
PY=""
for cand in ${PYTHON:-} python3 "$ROOT/.venv/bin/python"; do
  command -v "$cand" >/dev/null 2>&1 || continue
  if [[ $DEVICE == cuda* ]]; then
    "$cand" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1 || continue
  else
    "$cand" -c 'import torch' >/dev/null 2>&1 || continue
  fi
  PY=$cand
  break
done
if [[ -z $PY ]]; then
  what="torch"
  [[ $DEVICE == cuda* ]] && what="torch that sees a CUDA device"
  verdict "FAIL no Python with $what (tried ${PYTHON:+$PYTHON, }python3, .venv/bin/python; set PYTHON=...)"
fi
"$PY" scripts/gpu_check.py env --device "$DEVICE" >"$OUT/env.txt" 2>&1 ||
  verdict "FAIL environment: $(field "$OUT/env.txt" summary)"
NAME=$(field "$OUT/env.txt" device_name)
SIZE=""
[[ $TINY -eq 1 ]] && SIZE=", tiny"
say "gpu_check on $DEVICE ($NAME$SIZE), steps $ONLY, with $PY: $(field "$OUT/env.txt" summary); details in $OUT"

# ---- 1 and 2: the GPU-marked tests; the SIGKILL-and-resume ones among them
if want 1 || want 2; then
  if want 1; then
    mapfile -t TESTS < <(grep -l 'mark\.gpu' tests/test_*.py)
  else
    TESTS=(tests/test_gpu.py -k test_sigkill_at_a_random_step_then_resume_is_bitwise)
  fi
  say "[1] pytest -m gpu ${TESTS[*]}"
  timeout "$T_TESTS" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml="$OUT/pytest.xml" "${TESTS[@]}" \
    >"$OUT/pytest.log" 2>&1
  PYTEST_RC=$?
  "$PY" scripts/gpu_check.py pytest-summary "$OUT/pytest.xml" --device "$DEVICE" >"$OUT/pytest_summary.txt" 2>&1
  SUMMARY_RC=$?
  details "$OUT/pytest.log" 4
  S1=$(field "$OUT/pytest_summary.txt" summary)
  [[ $PYTEST_RC -eq 124 ]] && S1="timed out after $T_TESTS s; $S1"
  if want 1; then
    say "[1] GPU tests: $S1"
    # 5: nothing collected (no GPU test selected); the summary says whether that is a failure
    [[ $SUMMARY_RC -ne 0 || ($PYTEST_RC -ne 0 && $PYTEST_RC -ne 5) ]] && FAILS+=("GPU tests: $S1")
    REPORT+=("GPU tests $S1")
  fi
  if want 2; then
    RESUME=$(field "$OUT/pytest_summary.txt" resume)
    say "[2] SIGKILL-and-resume, bitwise: ${RESUME:-not run}"
    if [[ $DEVICE == cuda* && $(field "$OUT/pytest_summary.txt" resume_ok) != True ]]; then
      FAILS+=("SIGKILL-and-resume: ${RESUME:-not run}")
    fi
    REPORT+=("SIGKILL-and-resume ${RESUME:-not run}")
  fi
fi

# ---- 3: the bench's training rows at each precision
if want 3; then
  PRECISIONS=fp32,tf32,bf16
  [[ $DEVICE == cuda* ]] || PRECISIONS=fp32,bf16 # TF32 is a CUDA mode
  BENCH_HELP=$("$PY" -m gatedvae bench --help 2>&1)
  if [[ $BENCH_HELP != *--device* || $BENCH_HELP != *--precision* ]]; then
    say "[3] bench: not available (this gatedvae bench has no --device or no --precision)"
    REPORT+=("bench not available")
  else
    bench_step 3 bench bench-summary "$T_BENCH" bench --device "$DEVICE" --quick --only train --precision "$PRECISIONS"
  fi
fi

# ---- 4: the short fixed training against the recorded values
if want 4; then
  FIXED_ARGS=(fixed --device "$DEVICE" --out "$OUT/fixed")
  [[ $TINY -eq 1 ]] && FIXED_ARGS+=(--tiny)
  [[ $RECORD -eq 1 ]] && FIXED_ARGS+=(--record)
  [[ -n ${GPU_CHECK_EXPECTED:-} ]] && FIXED_ARGS+=(--expected "$GPU_CHECK_EXPECTED")
  say "[4] fixed training: scripts/gpu_check.py ${FIXED_ARGS[*]}"
  timeout "$T_FIXED" "$PY" scripts/gpu_check.py "${FIXED_ARGS[@]}" >"$OUT/fixed.log" 2>&1
  FIXED_RC=$?
  details "$OUT/fixed.log" 20
  S4=$(field "$OUT/fixed.log" summary)
  [[ -z $S4 ]] && S4="exit $FIXED_RC: $(tail -n 1 "$OUT/fixed.log")"
  [[ $FIXED_RC -eq 124 ]] && S4="timed out after $T_FIXED s"
  say "[4] fixed training: $S4"
  [[ $FIXED_RC -ne 0 ]] && FAILS+=("fixed training: $S4")
  REPORT+=("fixed training $S4")
fi

# ---- 5: ensembles (issue 18)
if want 5; then
  ENS_ARGS=(--device "$DEVICE" --only ensemble)
  [[ $TINY -eq 1 ]] && ENS_ARGS+=(--quick)
  bench_step 5 ensembles ensemble-summary "$T_ENSEMBLE" ensemble "${ENS_ARGS[@]}"
fi

# ---- the verdict
ELAPSED=$((SECONDS - START))
if [[ ${#FAILS[@]} -eq 0 ]]; then
  verdict "PASS $NAME$SIZE in ${ELAPSED} s: $(joined "${REPORT[@]}")"
fi
verdict "FAIL $(joined "${FAILS[@]}") ($NAME$SIZE, ${ELAPSED} s; details in $OUT)"
