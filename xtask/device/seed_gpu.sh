#!/bin/bash
# The seed network on a GPU in one call: mnist-rs on cuda and wgpu (mnist-kernels' CubeCL
# kernels, and Burn's for comparison) against PyTorch eager on the same card, then the
# seed recipe on Fashion-MNIST with --backend cuda. Past results are under bench/results/.
set -u

usage() {
    cat <<EOF
usage: bash xtask/device/seed_gpu.sh [--out DIR] [--budget SECONDS] [--binary FILE]
           [--data DIR] [--config FILE] [--anchor FILE] [--python PYTHON] [--debs DIR]

Measures \`mnist bench\` on cuda and wgpu (training at batch 50 and 512 with the CubeCL
kernels and with Burn's, evaluation, latency; the first cuda call compiles cold) and
PyTorch eager beside it, then trains the seed recipe on cuda for the rest of the budget.
Writes DIR/log.txt (every command and its output, the recipe's wall time) and the training
run's report.json, metrics.jsonl and plot.png.

  --out DIR         where the results go (default: \$OUT if set, else target/device)
  --budget SECONDS  the whole run's time; every step is cut to what is left, and the
                    training gets the rest (default: 540; give the device call about 30 s
                    more as its timeout)
  --binary FILE     the mnist binary, gzipped (.gz) or not: strip + gzip of
                    \`cargo build --release -p mnist-cli --features flex,wgpu,cuda\`
                    (default: .devrun/mnist.gz)
  --data DIR        the four Fashion-MNIST .gz files (default: .devrun/data)
  --config FILE     the training config (default: configs/fashion.json)
  --anchor FILE     PyTorch's training figures: a script taking \`DEVICE STEPS BATCH\`
                    (a copy of ../shared/anchors/torch_seed.py; default:
                    .devrun/anchor_torch_seed.py; left out when absent or '')
  --python PYTHON   the Python with torch, for the anchor and xtask/peers/torch_seed.py
                    (default: python3)
  --debs DIR        Vulkan/GL loader .deb files to unpack into / first, for a machine
                    without them (default: .gl; skipped when DIR has none; '' for never)
  -h, --help        this text

Relative paths are taken from the current directory (the repository root, as the device
tool runs commands there). Folders the device tool must carry (.gl, .devrun) belong in
.git/info/exclude.
EOF
}

SCRIPT=seed_gpu.sh
. "$(dirname "$0")/common.sh"

BUDGET=540
DATA=.devrun/data
CONFIG=configs/fashion.json
ANCHOR=.devrun/anchor_torch_seed.py
ANCHOR_GIVEN=
PYTHON=python3
while [ $# -gt 0 ]; do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --out) need_value "$@"; OUT_DIR=$2; shift 2 ;;
        --budget) need_value "$@"; BUDGET=$2; shift 2 ;;
        --binary) need_value "$@"; BINARY=$2; shift 2 ;;
        --data) need_value "$@"; DATA=$2; shift 2 ;;
        --config) need_value "$@"; CONFIG=$2; shift 2 ;;
        --anchor) need_value "$@"; ANCHOR=$2; ANCHOR_GIVEN=1; shift 2 ;;
        --python) need_value "$@"; PYTHON=$2; shift 2 ;;
        --debs) need_value "$@"; DEBS=$2; DEBS_GIVEN=1; shift 2 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
check_common 60
[ -d "$DATA" ] || die "--data: no directory $DATA"
[ -f "$CONFIG" ] || die "--config: no file $CONFIG"
[ -z "$ANCHOR" ] || [ -f "$ANCHOR" ] || [ -z "$ANCHOR_GIVEN" ] || die "--anchor: no file $ANCHOR"
command -v "$PYTHON" >/dev/null || die "--python: no command $PYTHON"
PEERS=$(cd "$(dirname "$0")/../peers" && pwd)

T0=$(date +%s)
left() { echo $((T0 + BUDGET - $(date +%s))); }
L=$OUT_DIR/log.txt
: >"$L"
log() { echo "$*" >>"$L"; }
# run LIMIT COMMAND...: the command under a timeout of LIMIT seconds, or of what is left
# of the budget if that is less (less 15 s for copying the results at the end).
run() {
    local t=$1 rest=$(($(left) - 15))
    shift
    [ "$t" -le "$rest" ] || t=$rest
    if [ "$t" -lt 5 ]; then log "== skipped, the budget is spent: $*"; return; fi
    log "== [$(($(date +%s) - T0))s, limit ${t}s] $*"
    timeout "$t" "$@" >>"$L" 2>&1
    log "rc=$? at $(($(date +%s) - T0))s"
}

prepare
{ nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; ldconfig -p | grep libvulkan; nproc; } >>"$L" 2>&1

# 1. cuda: batch-50 training with mnist-kernels' CubeCL kernels (the first call compiles
#    and autotunes cold: its log shows how long), then with Burn's, then warm again.
run 200 "$M" bench train --backend cuda --batch 50 --warmup 30 --repeats 300
run 90 "$M" bench train --backend cuda --kernels burn --batch 50 --warmup 30 --repeats 300
run 60 "$M" bench train --backend cuda --batch 50 --warmup 30 --repeats 300
# 2. wgpu, the same kernels.
run 120 "$M" bench train --backend wgpu --batch 50 --warmup 30 --repeats 300
if ! grep -q '"backend":"wgpu".*"images_per_sec"' "$L"; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    log "retry with VK_DRIVER_FILES"
    run 120 "$M" bench train --backend wgpu --batch 50 --warmup 30 --repeats 300
fi

# 3. PyTorch eager, same card: the anchor script (training) and the project's peer script.
export PYTHONUNBUFFERED=1
if [ -n "$ANCHOR" ] && [ -f "$ANCHOR" ]; then
    run 60 "$PYTHON" "$ANCHOR" cuda 3000 50
    run 60 "$PYTHON" "$ANCHOR" cuda 1000 512
else
    log "no anchor script ($ANCHOR): PyTorch's training figures left out"
fi
run 60 "$PYTHON" "$PEERS/torch_seed.py" eval --batch 500 --repeats 10
run 60 "$PYTHON" "$PEERS/torch_seed.py" latency --repeats 200 --warmup 20

# 4. Batch 512, evaluation and latency.
run 90 "$M" bench train --backend cuda --batch 512 --warmup 10 --repeats 100
run 60 "$M" bench train --backend cuda --kernels burn --batch 512 --warmup 10 --repeats 100
run 90 "$M" bench train --backend wgpu --batch 512 --warmup 10 --repeats 100
run 60 "$M" bench eval --backend cuda --batch 500 --repeats 5
run 60 "$M" bench latency --backend cuda --repeats 200 --warmup 20
run 60 "$M" bench eval --backend wgpu --batch 500 --repeats 5

# 5. The seed recipe on Fashion-MNIST on cuda, start-up included in the wall time.
log "training on cuda, $(left)s left"
RUN_DIR=$WORK/run
START=$(date +%s)
run "$(left)" "$M" train --backend cuda --config "$CONFIG" --data-dir "$DATA" --out "$RUN_DIR" --plain
log "seed recipe wall time: $(($(date +%s) - START))s"
cp "$RUN_DIR"/report.json "$RUN_DIR"/metrics.jsonl "$RUN_DIR"/plot.png "$OUT_DIR"/ 2>/dev/null
ls -la "$RUN_DIR" >>"$L" 2>&1
log "done at $(($(date +%s) - T0))s"
echo "wrote $L"
