//! A short soak (issue 8; the full one is `cargo bench -p quiesce-tests
//! --bench soak`): 100 library sessions and 20 CLI sessions leave this
//! process with no more open fds, threads or zombies than after the
//! warm-up, and RSS within the stated tolerance. Its own test binary: the
//! counts are this process's, so nothing else may run in it.

use quiesce_tests::soak::{count, table, SoakRig};

#[test]
fn a_hundred_sessions_in_one_process_and_twenty_through_the_cli_leak_no_fd_thread_zombie_or_memory() {
    quiesce_tests::require!(Root);
    let rig = SoakRig::new();
    // SOAK_LIB / SOAK_CLI make it the full soak without a release build.
    let lib = rig.library(count("SOAK_LIB", 100));
    let cli = rig.cli(count("SOAK_CLI", 20));
    println!("{}", table(&[&lib, &cli]));
    let grew: Vec<String> = lib.growth().into_iter().chain(cli.growth()).collect();
    assert!(grew.is_empty(), "{grew:#?}");
}
