//! `quiesce-client`: the service's client commands — `begin`, `end`,
//! `fsfreeze-hook` — in a binary of their own. An agent's hook starts a
//! process per call (qemu-ga twice per snapshot, the Azure extension's
//! wrappers, Velero's exec hooks), and `quiesce` links the whole WebAssembly
//! runtime: its loader applies ~36 000 relocations before `main`, about
//! 0.7 ms more per start than this binary's 2 000. The code is the library's
//! (`service::commands`), the same `quiesce begin|end|fsfreeze-hook` runs.

use std::process::ExitCode;

use clap::Parser;
use quiesce::service::commands::ClientCli;

fn main() -> ExitCode {
    ClientCli::parse().command.run()
}
