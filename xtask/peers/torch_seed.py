"""The seed network in PyTorch (eager), on CUDA when there is a GPU, else the CPU.
`cargo xtask bench` runs it beside mnist-rs and prints one JSON line per call, with the
same fields as `mnist bench`. Data are random and already on the device.

usage: python torch_seed.py train|eval|latency [--batch N] [--repeats R] [--warmup W] [--device D]
"""
import argparse, json, os, resource, time

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("measure", choices=["train", "eval", "latency"])
p.add_argument("--batch", type=int, default=50)
p.add_argument("--repeats", type=int, default=20)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
a = p.parse_args()
dev = torch.device(a.device)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 5, padding=2)
        self.c2 = nn.Conv2d(32, 64, 5, padding=2)
        self.f1 = nn.Linear(3136, 1024)
        self.f2 = nn.Linear(1024, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.f2(F.dropout(F.relu(self.f1(x.flatten(1))), 0.5, self.training))


torch.manual_seed(0)
model = Net().to(dev)
opt = torch.optim.Adam(model.parameters(), 1e-4, eps=1e-8)
X = torch.rand(10_000, 1, 28, 28, device=dev)
Y = torch.randint(0, 10, (10_000,), device=dev)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def train(i):
    model.train()
    o = (i * a.batch) % (len(X) - a.batch)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(X[o:o + a.batch]), Y[o:o + a.batch]).backward()
    opt.step()


@torch.no_grad()
def evaluate(_):
    model.eval()
    for o in range(0, len(X), a.batch):
        model(X[o:o + a.batch]).argmax(1)


@torch.no_grad()
def latency(i):
    model.eval()
    model(X[i % len(X)][None]).argmax(1).item()


run = {"train": train, "eval": evaluate, "latency": latency}[a.measure]
times = []
for i in range(a.warmup + a.repeats):
    sync()
    t = time.perf_counter()
    run(i)
    sync()
    if i >= a.warmup:
        times.append(time.perf_counter() - t)
median = sorted(times)[len(times) // 2]
images_per_rep = {"train": a.batch, "eval": len(X), "latency": 1}[a.measure]
name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
print(json.dumps({
    "system": "pytorch",
    "backend": f"torch {torch.__version__} {dev.type} eager",
    "device": name,
    "kernels": "eager",
    "measure": a.measure,
    "batch": 1 if a.measure == "latency" else a.batch,
    "repeats": len(times),
    "images_per_sec": images_per_rep / median,
    "median_ms": median * 1000,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_device_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
}))
