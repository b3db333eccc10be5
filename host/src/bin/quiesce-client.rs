//! `quiesce-client`: the service's client commands — `begin`, `end`,
//! `fsfreeze-hook` — in a binary of their own. An agent's hook starts a
//! process per call (qemu-ga twice per snapshot, the Azure extension's
//! wrappers, Velero's exec hooks), and `quiesce` links the whole WebAssembly
//! runtime: its loader applies ~36 000 relocations before `main`, about
//! 1.4 ms more than `/bin/true` per start. This binary links only the client
//! (the same code `quiesce begin|end|fsfreeze-hook` runs).

use std::process::ExitCode;

use clap::Parser;
use quiesce::service::commands::ClientCommand;

/// Client of the quiesce service (`quiesce serve`) at $QUIESCE_SOCKET
/// (default /run/quiesce/quiesce.sock): the same commands as `quiesce begin`,
/// `quiesce end` and `quiesce fsfreeze-hook`, in a small binary for hooks.
#[derive(Parser)]
#[command(name = "quiesce-client", version)]
struct Cli {
    #[command(subcommand)]
    command: ClientCommand,
}

fn main() -> ExitCode {
    Cli::parse().command.run()
}
