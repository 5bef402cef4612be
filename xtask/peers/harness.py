"""What the peer scripts share: their command line, the timing loop, and the JSON line
they print, with the same fields as `mnist bench`."""
import argparse, json, resource, statistics, time


def arguments(extra=None):
    """Parses `MEASURE [--batch N] [--repeats R] [--warmup W]`, plus what `extra` adds."""
    p = argparse.ArgumentParser()
    p.add_argument("measure", choices=["train", "eval", "latency"])
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    if extra:
        extra(p)
    return p.parse_args()


def report(a, runs, eval_images, sync=lambda: None, **fields):
    """Times `runs[a.measure](i)` over warm-up + repeats (`sync` waits for the device
    around each; training steps are timed as one block with one sync, their mean taken
    as the median) and prints the median as a JSON line, with `fields` (system, backend,
    device, kernels, ...); a callable field is called after the timing (peak memory)."""
    run = runs[a.measure]
    if a.measure == "train":
        # As `mnist bench train`: one timed block of steps, one sync at its end.
        for i in range(a.warmup):
            run(i)
        sync()
        t = time.perf_counter()
        for i in range(a.warmup, a.warmup + a.repeats):
            run(i)
        sync()
        times = [(time.perf_counter() - t) / a.repeats]
    else:
        times = []
        for i in range(a.warmup + a.repeats):
            sync()
            t = time.perf_counter()
            run(i)
            sync()
            if i >= a.warmup:
                times.append(time.perf_counter() - t)
    # The mean of the middle two for an even count, as mnist_bench::median.
    median = statistics.median(times)
    images_per_rep = {"train": a.batch, "eval": eval_images, "latency": 1}[a.measure]
    print(json.dumps({
        **{k: v() if callable(v) else v for k, v in fields.items()},
        "measure": a.measure,
        "batch": 1 if a.measure == "latency" else a.batch,
        "repeats": a.repeats,
        "images_per_sec": images_per_rep / median,
        "median_ms": median * 1000,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
