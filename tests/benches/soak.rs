//! The soak (issue 8): `SOAK_LIB` sessions (default 2000) through the
//! library in this process, then `SOAK_CLI` (default 500) through the
//! `quiesce` binary; open fds, RSS, threads and zombies sampled after the
//! warm-up, half way and at the end. Exits non-zero if any grew (RSS beyond
//! `quiesce_tests::soak::RSS_TOLERANCE_KIB`) or a session failed.
//! Needs root (loop mount) and `cargo build --release --bins` first.

use quiesce_tests::soak::{count, table, SoakRig};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rig = SoakRig::new();
    let lib = rig.library(count("SOAK_LIB", 2000));
    let cli = rig.cli(count("SOAK_CLI", 500));
    println!("{}", table(&[&lib, &cli]));
    let grew: Vec<String> = lib.growth().into_iter().chain(cli.growth()).collect();
    drop(rig);
    if !grew.is_empty() {
        eprintln!("soak: not flat:\n  {}", grew.join("\n  "));
        std::process::exit(1);
    }
    println!("soak: flat");
}
