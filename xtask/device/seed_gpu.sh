#!/bin/bash
# The GPU run of issues #5/#6, as run on the device machine (one H200, 2026-11-28; results
# in results/2026-11-28-h200/). The device tool copies the working tree; prepare, here:
#   .gl/      Vulkan/GL loader debs (see the device README: apt-get download libvulkan1 ...)
#   .devrun/  mnist.gz (strip + gzip of `cargo build --release -p mnist-cli --features
#             flex,ndarray,wgpu`), data/ (the four Fashion-MNIST .gz files),
#             anchor_torch_seed.py (copy of ../shared/anchors/torch_seed.py)
# both listed in .git/info/exclude and named in the run's carry; then run
#   BUDGET=520 bash xtask/device/seed_gpu.sh     (timeout_s 570)
# Output: $OUT/log.txt (every measurement), report.json, metrics.jsonl, plot.png.
set -u
T0=$(date +%s)
BUDGET=${BUDGET:-540}
left() { echo $((T0 + BUDGET - $(date +%s))); }
L=$OUT/log.txt
log() { echo "$*" >>"$L"; }
run() { local t=$1; shift; log "== [$(($(date +%s) - T0))s] $*"; timeout "$t" "$@" >>"$L" 2>&1; log "rc=$? at $(($(date +%s) - T0))s"; }

for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export XDG_RUNTIME_DIR=/tmp/xdg
mkdir -p -m 700 $XDG_RUNTIME_DIR
gzip -dc .devrun/mnist.gz >/tmp/mnist && chmod +x /tmp/mnist
M=/tmp/mnist
{ nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; ldconfig -p | grep libvulkan; nproc; } >>"$L" 2>&1

# 1. wgpu probe and batch-50 training with Burn's kernels.
run 120 $M bench train --backend wgpu --kernels burn --batch 50 --warmup 30 --repeats 300
if ! grep -q '"images_per_sec"' "$L"; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  log "retry with VK_DRIVER_FILES"
  run 120 $M bench train --backend wgpu --kernels burn --batch 50 --warmup 30 --repeats 300
fi
# 2. The same with im2col + matmul.
run 90 $M bench train --backend wgpu --kernels im2col --batch 50 --warmup 30 --repeats 300

# 3. PyTorch eager, same card: the anchor script and the project's peer script.
export PYTHONUNBUFFERED=1
run 60 python3 .devrun/anchor_torch_seed.py cuda 3000 50
run 60 python3 .devrun/anchor_torch_seed.py cuda 1000 512
(cd xtask/peers && run 60 python3 torch_seed.py eval --batch 500 --repeats 10)
(cd xtask/peers && run 60 python3 torch_seed.py latency --repeats 200 --warmup 20)

# 4. mnist-rs wgpu at batch 512, evaluation and latency.
run 90 $M bench train --backend wgpu --kernels burn --batch 512 --warmup 10 --repeats 100
run 90 $M bench train --backend wgpu --kernels im2col --batch 512 --warmup 10 --repeats 100
run 60 $M bench eval --backend wgpu --batch 500 --repeats 5
run 60 $M bench latency --backend wgpu --repeats 200 --warmup 20

# 5. The seed recipe on Fashion-MNIST, with the kernels that were faster at batch 50.
K=$(python3 - "$L" <<'EOF'
import json, sys
best = {}
for line in open(sys.argv[1]):
    if line.startswith("{") and '"mnist-rs"' in line:
        m = json.loads(line)
        if m["measure"] == "train" and m["batch"] == 50:
            best[m["kernels"]] = m["images_per_sec"]
print(max(best, key=best.get) if best else "burn")
EOF
)
log "training with --kernels $K, $(left)s left"
run $(($(left) - 15)) $M train --backend wgpu --kernels "$K" --config configs/fashion.json --data-dir .devrun/data --out /tmp/run --plain
cp /tmp/run/report.json /tmp/run/metrics.jsonl /tmp/run/plot.png "$OUT"/ 2>/dev/null
ls -la /tmp/run >>"$L" 2>&1
log "done at $(($(date +%s) - T0))s"
