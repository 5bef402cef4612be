#!/bin/bash
# Per-kernel GPU time of timed training steps on wgpu (CubeCL's profiling summary, enabled
# by a cubecl.toml in the working directory), for Burn's kernels and im2col at batch 512
# and Burn's at batch 50. Prepared as for seed_gpu.sh (same --debs and --binary); past
# results are under bench/results/.
set -u

usage() {
    cat <<EOF
usage: bash xtask/device/profile.sh [--out DIR] [--binary FILE] [--debs DIR] [--budget SECONDS]

Runs \`mnist bench train --backend wgpu\` three times (Burn's kernels and im2col at batch
512, Burn's at batch 50) with CubeCL's profiler on, and writes the last profiling summary
of each (the timed block) and its JSON line to DIR/profile.txt.

  --out DIR         where profile.txt goes (default: \$OUT if set, else target/device)
  --binary FILE     the mnist binary, gzipped (.gz) or not, built with the wgpu feature
                    (default: .devrun/mnist.gz)
  --debs DIR        Vulkan/GL loader .deb files to unpack into / first, for a machine
                    without them (default: .gl; skipped when DIR has none; '' for never)
  --budget SECONDS  the whole run's time, shared out over the three measurements
                    (default: 270)
  -h, --help        this text

Relative paths are taken from the current directory (the repository root, as the device
tool runs commands there).
EOF
}

SCRIPT=profile.sh
. "$(dirname "$0")/common.sh"

BUDGET=270
while [ $# -gt 0 ]; do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --out) need_value "$@"; OUT_DIR=$2; shift 2 ;;
        --binary) need_value "$@"; BINARY=$2; shift 2 ;;
        --debs) need_value "$@"; DEBS=$2; DEBS_GIVEN=1; shift 2 ;;
        --budget) need_value "$@"; BUDGET=$2; shift 2 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
check_common 30
T0=$(date +%s)
: >"$OUT_DIR/profile.txt"

prepare
cd "$WORK" && printf '[profiling.logger]\nlevel = "basic"\nstdout = true\n' >cubecl.toml

specs=("burn 512 20" "im2col 512 20" "burn 50 100")
for i in "${!specs[@]}"; do
    set -- ${specs[$i]}
    left=$((T0 + BUDGET - $(date +%s)))
    share=$((left / (${#specs[@]} - i)))
    echo "== kernels $1 batch $2 (limit ${share}s)" | tee -a "$OUT_DIR/profile.txt"
    if [ "$share" -lt 5 ]; then
        echo "skipped: the budget is spent" | tee -a "$OUT_DIR/profile.txt"
        continue
    fi
    timeout "$share" "$M" bench train --backend wgpu --kernels "$1" --batch "$2" --warmup 5 --repeats "$3" 2>&1 \
        | sed -E 's/ {2,}/ /g; s/[⎺⎼⎯]+/-/g' | grep -v '^| [0-9.]*[µm]*s |' >"$WORK/out.txt"
    # Keep the last summary (the timed block) and the JSON line.
    awk '/\| Name/{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$WORK/out.txt" >>"$OUT_DIR/profile.txt"
done
echo "wrote $OUT_DIR/profile.txt"
