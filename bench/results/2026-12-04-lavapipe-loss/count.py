"""Kernel launches per training step from CubeCL's execution log.

Usage: python3 count.py launches.log
The log comes from `mnist bench train --backend wgpu ...` run in a directory whose
cubecl.toml has `[profiling.logger] level = "minimal"`. A step starts at its first
convolution-block forward kernel (two a step: conv1's and conv2's), so the log is split
at every other `ForwardKernel`; the last complete step's kernels are listed by name.
"""
import collections
import sys

lines = [l.strip() for l in open(sys.argv[1]) if l.startswith('Executing')]
starts = [i for i, l in enumerate(lines) if l.startswith('Executing ForwardKernel')][::2]
segs = [lines[a:b] for a, b in zip(starts, starts[1:])]
for k, s in enumerate(segs):
    print('step segment', k + 1, 'launches', len(s))
last = segs[-1]
names = collections.Counter(
    l.split(' | ')[0].replace('Executing ', '') + (' (fused args)' if 'FusedMatmulArgs' in l else '') for l in last
)
for n, v in names.most_common():
    print(f'{v:4d} {n}')
