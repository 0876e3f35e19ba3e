#!/usr/bin/env bash
# wan_bench on the GPU machine, side by side with the Python reference, in ONE device call:
#
#   examples/wan_bench/make_carry.sh      # here, first: fills .device/ (headers, reference sources)
#   run(command="bash examples/wan_bench/device_run.sh", carry=[".device"], timeout_s=600)
#
# It configures and builds only wan_bench (and the offload_wan library it links) and offload_cuda_tests
# against PyTorch's bundled LibTorch with every core, then runs, each part with its own time limit
# inside one deadline (DEADLINE seconds from the start, default 570) so that a slow or failing part
# never stops the next:
#   0. offload_cuda_tests (tests/cuda): offload's CUDA paths on the card, outputs bit-identical; and
#      offload_cuda_dit_activations: the denoise stage's DiT activation model against the allocator;
#   1. wan_bench T2V-1.3B 832x480x81, STEPS steps (default 3: from its third step UniPC runs its
#      second-order corrector, with a solve on the GPU, and holds its steady-state latents), after a
#      warm-up: resident, offload_model,
#      offload_model+t5_cpu and the lowest-memory streamed policy (LOW_13B, with VAE tiles of 32 and
#      of 16); then each component's
#      whole onload from pinned masters and its eviction, timed (--onload_probe);
#   2. the Python reference harness (wan_py_memory.py) with the same model, size, frames and steps;
#   3. wan_bench T2V-14B 1280x720x81, STEPS_14B steps (default 2): the streamed policies of
#      POLICIES_14B, then resident;
#   4. wan_bench T2V-1.3B again with resident and the EXTRA_13B policies (storage and tiling options).
# PARTS (default "cuda_tests t2v_1_3B python t2v_14B t2v_1_3B_extra") picks which of 0-4 run, in order: a
# second call on the still-warm machine (its build-device/ kept, so the build is a no-op) can run what
# the first one's deadline cut, e.g. PARTS=t2v_14B.
# Policies this wan_bench's grammar does not accept are left out (wan_bench --dry_run checks each).
# Results in $OUT (at most 8 files come back): summary.txt (what ran, how long, the tables), build.log,
# runs.log (every run's output), t2v_1_3B.json, t2v_1_3B_extra.json, t2v_14B.json, wan_py_memory.json.
# Targets of issue 5 and how to read the figures: docs/benchmark.md.
set -euo pipefail

START=$SECONDS
DEADLINE=${DEADLINE:-570}
PARTS=${PARTS:-cuda_tests t2v_1_3B python t2v_14B t2v_1_3B_extra}
STEPS=${STEPS:-3}
STEPS_14B=${STEPS_14B:-2}
MAX_13B=${MAX_13B:-200} # seconds one T2V-1.3B invocation may take (models, warm-up, every policy)
MAX_14B=${MAX_14B:-330} # the same for T2V-14B
OUT=${OUT:-/tmp/wan_bench_out}
JOBS=${JOBS:-$(nproc)}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEV=$ROOT/.device
BUILD=${BUILD:-$ROOT/build-device}
BENCH=$BUILD/examples/wan_bench/wan_bench
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
RUNS=$OUT/runs.log
: > "$SUMMARY"
: > "$RUNS"

# ---- the policies ---------------------------------------------------------------------------------
# The lowest-memory placement, with every stage on the GPU (planned 2.23 GiB): T5 streamed through 2
# block slots (its token embedding stays on the host), the DiT streamed in bf16 (the same bits under
# autocast), the VAE tiled and brought in for its stage only. Last: store= converts the masters.
LOW_13B='t5=cuda:on_demand:stream=2:pinned,dit=cuda:on_demand:stream=2:store=bf16:pinned,vae=cuda:on_demand:tile=32:pinned'
# The same with tiles of 16: on the fake CUDA runtime (LibTorch's own convolutions, no cuDNN) the
# tiled decode at 32 peaked at 4.54 GiB against 2.19 planned, at 16 at 1.81 (docs/benchmark.md).
POLICIES_13B=(resident offload_model offload_model+t5_cpu "$LOW_13B" "${LOW_13B/tile=32/tile=16}")
# >>> EXTRA POLICIES: storage (:store=bf16) and tiling (:tile=N[:overlap=M]) options of the policy
# grammar. They run in a separate invocation (with its own resident run), so that a wan_bench whose
# grammar lacks an option still runs the other parts. Extend this list as options land. store=
# converts the masters one-way (later policies see them converted): keep store= policies last.
EXTRA_13B=(
  'offload_model+vae_cpu'
  'offload_model+vae_cpu,pinned'
  'offload_model+vae_cpu,pinned,prefetch'
  't5=cpu,dit=cuda:on_demand:stream=2:pinned,vae=cuda:on_demand:pinned'
  't5=cpu,dit=cuda:on_demand:stream=2:pinned,vae=cuda:on_demand:tile=32:pinned'
  't5=cpu,dit=cuda:on_demand:stream=2:store=bf16:pinned,vae=cuda:on_demand:pinned'
  't5=cpu,dit=cuda:resident:store=bf16,vae=cuda:resident'
)
# T2V-14B: the issue's target (peak <= 12 GiB) needs the DiT streamed and the VAE tiled; resident
# second, for the time ratio; the untiled streamed policy last.
POLICIES_14B=(
  't5=cpu,dit=cuda:on_demand:stream=2:pinned,vae=cuda:on_demand:tile=32:pinned'
  resident
  't5=cpu,dit=cuda:on_demand:stream=2:pinned,vae=cuda:on_demand:pinned'
)
# <<< EXTRA POLICIES

elapsed() { echo $((SECONDS - START)); }
# want NAME: whether PARTS names it (the others are noted as not asked for).
want() {
  [[ " $PARTS " == *" $1 "* ]] && return 0
  note "$(printf '%-22s not in PARTS' "$1")"
  return 1
}
note() { echo "$*" | tee -a "$SUMMARY"; }

# part NAME MAX_SECONDS MIN_SECONDS CMD...: runs CMD with a time limit of MAX_SECONDS or what is left
# before the deadline; skipped when less than MIN_SECONDS is left. Output appended to runs.log (the
# build's to build.log). Never fails the script.
part() {
  local name=$1 max=$2 min=$3
  shift 3
  local left=$((DEADLINE - $(elapsed) - 5))
  if ((left < min)); then
    note "$(printf '%-22s skipped: %ds left before the deadline, %ds needed' "$name" "$left" "$min")"
    return 0
  fi
  local limit=$((max < left ? max : left)) t0=$SECONDS status log=$RUNS
  [[ $name == configure || $name == build ]] && log=$OUT/build.log
  echo "===== $name (limit ${limit}s, at $(elapsed)s): $*" >> "$log"
  if timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1; then status=ok; else status="FAILED (exit $?)"; fi
  note "$(printf '%-22s %-18s %4ds  (at %ds)' "$name" "$status" $((SECONDS - t0)) "$(elapsed)")"
  [[ $status == ok ]]
}

# bench NAME JSON POLICY... -- ARGS...: wan_bench with the policies its grammar accepts (a dry run
# checks each) and ARGS, its table copied into the summary. The JSON is rewritten after every policy.
bench() {
  local name=$1 json=$2
  shift 2
  local given=()
  while (($#)) && [[ $1 != -- ]]; do given+=("$1"); shift; done
  shift
  [[ -x $BENCH ]] || { note "$(printf '%-22s skipped: wan_bench was not built' "$name")"; return 0; }
  local policies=() p
  for p in "${given[@]}"; do
    if "$BENCH" --dry_run --device cuda:0 --policy "$p" "$@" > /dev/null 2>> "$RUNS"; then
      policies+=(--policy "$p")
    else
      note "$(printf '%-22s leaves out %s (refused by the dry run, see runs.log)' "$name" "$p")"
    fi
  done
  ((${#policies[@]})) || { note "$(printf '%-22s skipped: no policy left' "$name")"; return 0; }
  local mark
  mark=$(wc -l < "$RUNS")
  part "$name" "$MAX_PART" "$MIN_PART" "$BENCH" --device cuda:0 --threads "$JOBS" --steps "$STEPS_PART" \
    --json "$OUT/$json" "$@" "${policies[@]}" || true
  tail -n +"$((mark + 1))" "$RUNS" | sed -n '/^wan_bench: /,/^hidden = /p' >> "$SUMMARY"
}

# ---- the machine ----------------------------------------------------------------------------------
{
  echo "wan_bench device run, $(date -u +%FT%TZ), deadline ${DEADLINE}s, ${STEPS} steps (T2V-14B: ${STEPS_14B}), ${JOBS} jobs"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1 || true
  python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "threads", torch.get_num_threads())' 2>&1 || true
  (c++ --version 2>&1 | head -1) || true
  (cmake --version 2>&1 | head -1) || true
  (command -v nvcc >/dev/null && nvcc --version | tail -1) || echo "nvcc: not on PATH"
} >> "$SUMMARY"
[[ -d $DEV/include && -d $DEV/cmake ]] ||
  note "no .device/ folder: run examples/wan_bench/make_carry.sh here and carry '.device' (the build will fail)"

# ---- configure and build --------------------------------------------------------------------------
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null || echo "")
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || echo "")
# The CUDA libraries of PyTorch's wheels (nvidia/*/lib): the linker follows libtorch_cuda's needs there.
NV_LIBS=$(python3 - 2>/dev/null <<'EOF' || true
import glob, os, site
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs.update(d for d in glob.glob(os.path.join(sp, "nvidia", "**", "lib"), recursive=True) if os.path.isdir(d))
print(":".join(sorted(dirs)))
EOF
)
NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export LD_LIBRARY_PATH=${TORCH_LIB}${NV_LIBS:+:$NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
cmake_args=(
  -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX"
  -Dfmt_DIR="$DEV/cmake/fmt" -Drange-v3_DIR="$DEV/cmake/range-v3"
  -Dnlohmann_json_DIR="$DEV/cmake/nlohmann_json" -DCLI11_DIR="$DEV/cmake/CLI11"
  -DWAN_GENERATE_STB_DIR="$DEV/include/stb"
  -DOFFLOAD_BUILD_TESTS=OFF -DOFFLOAD_BUILD_CUDA_TESTS=ON -DOFFLOAD_INSTALL=OFF
  # Before LibTorch's own include folder (which may hold a newer fmt): -I precedes -isystem.
  -DCMAKE_CXX_FLAGS="-I$DEV/include"
  -DCMAKE_EXE_LINKER_FLAGS="${NV_LIBS:+-Wl,-rpath-link,$NV_LIBS}"
)
# LibTorch's cuda.cmake runs its bundled legacy FindCUDA first, which reads CUDA_TOOLKIT_ROOT_DIR
# (not CMAKE_CUDA_COMPILER / CUDAToolkit_ROOT) and otherwise finds only an nvcc on PATH or in
# <prefix>/cuda/bin.
[[ -n $NVCC ]] && cmake_args+=(-DCMAKE_CUDA_COMPILER="$NVCC" -DCUDAToolkit_ROOT="$(dirname "$(dirname "$NVCC")")"
                               -DCUDA_TOOLKIT_ROOT_DIR="$(dirname "$(dirname "$NVCC")")")
CUDA_TESTS=$BUILD/tests/cuda/offload_cuda_tests
if part configure 120 20 cmake "${cmake_args[@]}"; then
  # offload_cuda_tests only where Boost.Test's headers were found; -k 0: a failure in one target
  # leaves the other built.
  targets=(wan_bench)
  grep -q "offload_cuda_tests" "$BUILD/build.ninja" && targets+=(offload_cuda_tests)
  grep -q "offload_cuda_dit_activations" "$BUILD/build.ninja" && targets+=(offload_cuda_dit_activations)
  part build 300 60 cmake --build "$BUILD" --target "${targets[@]}" -j "$JOBS" -- -k 0 || true
fi
grep -E "error|Error|CMake Warning" "$OUT/build.log" 2>/dev/null | head -n 20 >> "$SUMMARY" || true

# ---- the runs -------------------------------------------------------------------------------------
if want cuda_tests; then
  if [[ -x $CUDA_TESTS ]]; then
    mark=$(wc -l < "$RUNS")
    part cuda_tests 120 20 "$CUDA_TESTS" --color_output=no || true
    tail -n +"$((mark + 1))" "$RUNS" | grep -E "^offload_cuda_tests|error|skipped|failure|No errors" | head -n 30 >> "$SUMMARY" || true
  else
    note "cuda_tests             skipped: offload_cuda_tests was not built (Boost.Test's headers? see build.log)"
  fi
  if [[ -x $BUILD/tests/cuda/offload_cuda_dit_activations ]]; then
    mark=$(wc -l < "$RUNS")
    part dit_activations 60 15 "$BUILD/tests/cuda/offload_cuda_dit_activations" || true
    tail -n +"$((mark + 1))" "$RUNS" | grep -E "^offload_cuda_dit_activations" >> "$SUMMARY" || true
  else
    note "dit_activations        skipped: offload_cuda_dit_activations was not built (see build.log)"
  fi
fi

MAX_PART=$MAX_13B MIN_PART=45 STEPS_PART=$STEPS
want t2v_1_3B &&
  bench t2v_1_3B t2v_1_3B.json "${POLICIES_13B[@]}" -- --task t2v-1.3B --size 832*480 --frame_num 81 --warmup \
    --onload_probe

if ! want python; then
  :
elif [[ -f $DEV/wanref/wan_py_memory.py ]]; then
  # The harness times T5 on the host once at the end (its t5_cpu runs reuse the resident run's
  # context): that figure goes with our t5=cpu text_encode.
  PYTHONUNBUFFERED=1 WAN_REF=$DEV/wanref STEPS=$STEPS FRAMES=81 \
    COMBOS=resident,offload,offload+t5_cpu,offload+vae_cpu+t5_cpu OUT=$OUT \
    part python_t2v_1_3B 150 45 python3 "$DEV/wanref/wan_py_memory.py" || true
  grep -A20 '^SUMMARY' "$RUNS" >> "$SUMMARY" || true
else
  note "python_t2v_1_3B        skipped: .device/wanref/wan_py_memory.py not carried (make_carry.sh)"
fi

MAX_PART=$MAX_14B MIN_PART=120 STEPS_PART=$STEPS_14B
want t2v_14B && bench t2v_14B t2v_14B.json "${POLICIES_14B[@]}" -- --task t2v-14B --size 1280*720 --frame_num 81

MAX_PART=$MAX_13B MIN_PART=45 STEPS_PART=$STEPS
want t2v_1_3B_extra &&
  bench t2v_1_3B_extra t2v_1_3B_extra.json resident "${EXTRA_13B[@]}" -- --task t2v-1.3B --size 832*480 --frame_num 81

note "done in $(elapsed)s; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
cat "$SUMMARY"
