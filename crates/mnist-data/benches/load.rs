//! Loading speed and memory: the full 70,000 Fashion-MNIST images (Debian's package, when
//! installed) and the bundled 10,000-digit sample. Goal: under 1 s and under 250 MB.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use mnist_data::{DEBIAN_FASHION_DIR, Dataset, DatasetKind, Locator};

/// Peak resident memory of this process so far, in MB (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn load(c: &mut Criterion) {
    let dir = Path::new(DEBIAN_FASHION_DIR);
    if dir.is_dir() {
        let before = peak_rss_mb();
        let data = Dataset::load_dir(DatasetKind::Fashion, dir).expect("Fashion-MNIST loads");
        assert_eq!(data.train.len() + data.test.len(), 70_000);
        drop(data);
        if let (Some(b), Some(a)) = (before, peak_rss_mb()) {
            println!("fashion 70k: peak resident memory {a:.0} MB (was {b:.0} MB before loading)");
        }
        c.bench_function("load fashion-mnist 70k (gzip)", |b| {
            b.iter(|| Dataset::load_dir(DatasetKind::Fashion, dir).expect("loads"))
        });
    } else {
        println!("skipping the 70k benchmark: {DEBIAN_FASHION_DIR} is absent (apt-get install dataset-fashion-mnist)");
    }
    c.bench_function("load bundled sample 10k", |b| {
        b.iter(|| Locator::offline(None).load(DatasetKind::Sample).expect("loads"))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = load
}
criterion_main!(benches);
