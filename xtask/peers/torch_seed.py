"""The seed network in PyTorch (eager), on CUDA when there is a GPU, else the CPU.
`cargo xtask bench` runs it beside mnist-rs and prints one JSON line per call, with the
same fields as `mnist bench`. Data are random and already on the device.

usage: python torch_seed.py train|eval|latency [--batch N] [--repeats R] [--warmup W] [--device D]
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import harness

a = harness.arguments(lambda p: p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu"))
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


name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
harness.report(
    a,
    {"train": train, "eval": evaluate, "latency": latency},
    len(X),
    sync,
    system="pytorch",
    backend=f"torch {torch.__version__} {dev.type} eager",
    device=name,
    kernels="eager",
    peak_device_mib=lambda: torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
)
