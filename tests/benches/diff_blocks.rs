//! `points diff` against the brute-force compare it replaces: a 1 GiB disk
//! image, 1 % of its 4 KiB blocks rewritten at random between two points.
//!
//! - reflink: two FICLONE clones of the image on XFS (`reflink=1`), diffed
//!   from their extent maps (FIEMAP);
//! - btrfs: two read-only snapshots of a subvolume holding the image,
//!   diffed from the extent generations (tree search).
//!
//! Brute force reads both copies whole and compares them block by block:
//! "warm" with both in the page cache (the fastest it can be), "cold" after
//! `POSIX_FADV_DONTNEED` on both files. Each result is checked against the
//! blocks written, so the numbers are for the same (correct) answer.
//! Run: `cargo bench -p quiesce-tests --bench diff_blocks` (root; ~4 GiB of
//! sparse loop images, ~2.1 GiB written, removed at the end).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use quiesce::points::diff;
use quiesce::snapshot::{self, SnapshotContext};
use quiesce_tests::blocks::{self, Rng, BLOCK};
use quiesce_tests::*;

const SIZE: u64 = 1 << 30;
/// 1 % of the blocks.
const CHANGED_BLOCKS: u64 = SIZE / BLOCK / 100;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median and best of `runs` (the machine is shared: the best run is the
/// one least disturbed by other work).
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> ((Duration, Duration), T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed());
    }
    let best = times.iter().min().copied().unwrap_or_default();
    ((median(times), best), last.expect("at least one run"))
}

fn drop_cache(p: &Path) {
    let f = std::fs::File::open(p).expect("open");
    // SAFETY: a valid fd; the advice only drops clean cached pages of this file.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

struct Row {
    method: &'static str,
    /// (median, best)
    diff: (Duration, Duration),
    warm: (Duration, Duration),
    cold: (Duration, Duration),
    changed: u64,
}

fn measure(method: &'static str, a: &Path, b: &Path, expected: &[(u64, u64)], run: impl Fn() -> diff::Diff) -> Row {
    let (d_time, d) = time(11, &run);
    let got = blocks::merge(d.files.iter().flat_map(|f| f.ranges.iter().map(|r| (r.offset, r.len))).collect());
    assert_eq!(got, expected, "{method}: the diff is the blocks written");
    let (warm, brute) = time(3, || blocks::brute_force(a, b));
    assert_eq!(brute, expected, "brute force agrees");
    let (cold, _) = time(3, || {
        drop_cache(a);
        drop_cache(b);
        blocks::brute_force(a, b)
    });
    Row { method, diff: d_time, warm, cold, changed: d.changed_bytes }
}

fn ctx(id: &str) -> SnapshotContext {
    SnapshotContext { session_id: id.into(), frozen_mounts: Vec::new() }
}

fn take(provider: &dyn snapshot::SnapshotProvider, id: &str) -> snapshot::Made {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(provider.take(&ctx(id))).expect("take")
}

fn reflink_row(s: &Scratch) -> Row {
    let x = LoopMount::with_size(&s.path, "x", Fs::Xfs, 2600);
    let img = x.path().join("disk.img");
    let mut rng = Rng::new(7);
    blocks::random_image(&img, SIZE, &[], &mut rng);
    let provider = |dest: &str| snapshot::ReflinkClone { source: img.clone(), dest: x.path().join(dest) };
    let a = take(&provider("a.img"), "a");
    let written = blocks::random_block_writes(&img, SIZE, CHANGED_BLOCKS, &mut rng);
    let b = take(&provider("b.img"), "b");
    let row = measure("reflink (FIEMAP)", &a.paths[0], &b.paths[0], &written, || diff::between(&a, &b).expect("diff"));
    let image = x.image.clone();
    drop(x);
    let _ = std::fs::remove_file(image);
    row
}

fn btrfs_row(s: &Scratch) -> Row {
    let m = LoopMount::with_size(&s.path, "b", Fs::Btrfs, 2600);
    let vol = m.path().join("vol");
    sh(&format!("btrfs -q subvolume create {}", vol.display()));
    let img = vol.join("disk.img");
    let mut rng = Rng::new(8);
    blocks::random_image(&img, SIZE, &[], &mut rng);
    let provider = |dest: &str| snapshot::btrfs::BtrfsSnapshot { source: vol.clone(), dest: m.path().join(dest) };
    let a = take(&provider("a"), "a");
    let written = blocks::random_block_writes(&img, SIZE, CHANGED_BLOCKS, &mut rng);
    let b = take(&provider("b"), "b");
    let row = measure("btrfs (generations)", &a.paths[0].join("disk.img"), &b.paths[0].join("disk.img"), &written, || {
        diff::between(&a, &b).expect("diff")
    });
    let image = m.image.clone();
    drop(m);
    let _ = std::fs::remove_file(image);
    row
}

fn main() {
    let s = Scratch::new("bench-diff");
    let rows = [reflink_row(&s), btrfs_row(&s)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\npoints diff vs brute force: 1 GiB image, {CHANGED_BLOCKS} random 4 KiB blocks (1 %) rewritten");
    println!("median (best) of 11 diffs, 3 brute-force runs each; load average {}", load.split(' ').next().unwrap_or("?"));
    println!("| method | changed (reported) | diff | brute force, warm | brute force, cold | speed-up, warm | speed-up, cold |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let x = |b: (Duration, Duration), d: (Duration, Duration)| {
            format!("{:.0}× ({:.0}×)", b.0.as_secs_f64() / d.0.as_secs_f64(), b.1.as_secs_f64() / d.1.as_secs_f64())
        };
        println!(
            "| {} | {:.1} MiB | {:.1} ms ({:.1} ms) | {:.0} ms ({:.0} ms) | {:.0} ms ({:.0} ms) | {} | {} |",
            r.method,
            r.changed as f64 / (1 << 20) as f64,
            ms(r.diff.0),
            ms(r.diff.1),
            ms(r.warm.0),
            ms(r.warm.1),
            ms(r.cold.0),
            ms(r.cold.1),
            x(r.warm, r.diff),
            x(r.cold, r.diff)
        );
    }
}
