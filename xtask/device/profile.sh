#!/bin/bash
# Per-kernel GPU time of timed training steps (CubeCL's profiling summary, enabled by a
# cubecl.toml in the working directory), for Burn's kernels and im2col at batch 512 and
# Burn's at batch 50. Prepared as for seed_gpu.sh; run `bash xtask/device/profile.sh`.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export XDG_RUNTIME_DIR=/tmp/xdg; mkdir -p -m 700 $XDG_RUNTIME_DIR
gzip -dc .devrun/mnist.gz >/tmp/mnist && chmod +x /tmp/mnist
mkdir -p /tmp/p && cd /tmp/p && printf '[profiling.logger]\nlevel = "basic"\nstdout = true\n' > cubecl.toml
for spec in "burn 512 20" "im2col 512 20" "burn 50 100"; do
  set -- $spec
  echo "== kernels $1 batch $2" | tee -a $OUT/profile.txt
  timeout 80 /tmp/mnist bench train --backend wgpu --kernels $1 --batch $2 --warmup 5 --repeats $3 2>&1 | sed -E 's/ {2,}/ /g; s/[⎺⎼⎯]+/-/g' | grep -v '^| [0-9.]*[µm]*s |' > /tmp/p/out.txt
  # Keep the last summary (the timed block) and the JSON line.
  awk '/\| Name/{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' /tmp/p/out.txt >> $OUT/profile.txt
done
