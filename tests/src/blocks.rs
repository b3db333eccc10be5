//! Disk images with random content and random writes, and the brute-force
//! compare `points diff` is checked and measured against.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// 4 KiB: the block size of every file system the tests use.
pub const BLOCK: u64 = 4096;

/// splitmix64: seeded, reproducible, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A `size`-byte image of random data, with the ranges in `holes` left sparse.
pub fn random_image(path: &Path, size: u64, holes: &[(u64, u64)], rng: &mut Rng) {
    let f = OpenOptions::new().write(true).create_new(true).open(path).expect("create image");
    f.set_len(size).expect("size image");
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64);
        let in_hole = holes.iter().any(|(a, b)| pos < *b && pos + n > *a);
        if !in_hole {
            rng.fill(&mut buf[..n as usize]);
            f.write_all_at(&buf[..n as usize], pos).expect("write image");
        }
        pos += n;
    }
    f.sync_all().expect("sync image");
}

/// `count` writes of random data at random offsets (lengths 1 byte to
/// `max_len`, unaligned); returns the blocks they touched, merged, as
/// (offset, len) — what a changed-block map must report.
pub fn random_writes(path: &Path, size: u64, count: usize, max_len: u64, rng: &mut Rng) -> Vec<(u64, u64)> {
    let f = OpenOptions::new().write(true).open(path).expect("open image");
    let mut touched = Vec::new();
    for _ in 0..count {
        let len = 1 + rng.below(max_len);
        let off = rng.below(size - len);
        let mut buf = vec![0u8; len as usize];
        rng.fill(&mut buf);
        f.write_all_at(&buf, off).expect("write");
        let first = off / BLOCK * BLOCK;
        let end = (off + len).div_ceil(BLOCK) * BLOCK;
        touched.push((first, end.min(size) - first));
    }
    f.sync_all().expect("sync");
    merge(touched)
}

/// Exactly `blocks` distinct whole blocks overwritten with random data
/// (the bench's "1 % changed"). Returns them merged.
pub fn random_block_writes(path: &Path, size: u64, blocks: u64, rng: &mut Rng) -> Vec<(u64, u64)> {
    let f = OpenOptions::new().write(true).open(path).expect("open image");
    let total = size / BLOCK;
    let mut chosen = std::collections::BTreeSet::new();
    while (chosen.len() as u64) < blocks.min(total) {
        chosen.insert(rng.below(total));
    }
    let mut buf = vec![0u8; BLOCK as usize];
    for b in &chosen {
        rng.fill(&mut buf);
        f.write_all_at(&buf, b * BLOCK).expect("write");
    }
    f.sync_all().expect("sync");
    merge(chosen.iter().map(|b| (b * BLOCK, BLOCK)).collect())
}

/// Sorted, with overlapping and adjacent ranges joined.
pub fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (o, l) in r {
        match out.last_mut() {
            Some((lo, ll)) if o <= *lo + *ll => *ll = (*ll).max(o + l - *lo),
            _ => out.push((o, l)),
        }
    }
    out
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).expect("read") {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// Brute force: every `BLOCK` whose bytes differ between the two files
/// (bytes past the shorter file's end count as different), merged.
pub fn brute_force(a: &Path, b: &Path) -> Vec<(u64, u64)> {
    let (mut fa, mut fb) = (File::open(a).expect("open a"), File::open(b).expect("open b"));
    let chunk = 1 << 20;
    let (mut ba, mut bb) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut out = Vec::new();
    let mut pos = 0u64;
    loop {
        let (na, nb) = (read_full(&mut fa, &mut ba), read_full(&mut fb, &mut bb));
        let n = na.max(nb);
        if n == 0 {
            return merge(out);
        }
        let mut off = 0;
        while off < n {
            let end = (off + BLOCK as usize).min(n);
            if end > na || end > nb || ba[off..end] != bb[off..end] {
                out.push((pos + off as u64, (end - off) as u64));
            }
            off = end;
        }
        pos += n as u64;
    }
}

/// The byte count of merged ranges.
pub fn total(r: &[(u64, u64)]) -> u64 {
    r.iter().map(|(_, l)| l).sum()
}

/// True when every byte of `inner` is inside `outer` (both merged).
pub fn covers(outer: &[(u64, u64)], inner: &[(u64, u64)]) -> bool {
    inner.iter().all(|(o, l)| outer.iter().any(|(oo, ol)| *oo <= *o && o + l <= oo + ol))
}
