//! The service's client commands — `begin`, `end`, `fsfreeze-hook` — as
//! both binaries run them: `quiesce` and the small `quiesce-client`, which
//! agents' hooks start once per call (see `src/bin/quiesce-client.rs`).
//! Exit statuses match `quiesce snapshot`'s: 0 go ahead / the report's 0, 3,
//! 4; 2 a bad request; 4 no snapshot may be taken; 5 the service is
//! unreachable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::{socket_from_env, Client, ClientError};
use crate::session::FreezeMode;

/// Exit status when the service cannot be reached.
pub const UNREACHABLE: u8 = 5;
/// Exit status of a usage error, for every command: bad arguments, a
/// `--mount` that is not a mount point, a request the service called malformed.
pub const USAGE: u8 = 2;

/// `quiesce-client`'s command line: its binary parses it, and `quiesce
/// generate-docs` makes its man pages and completions from it.
#[derive(Parser)]
#[command(
    name = "quiesce-client",
    version,
    about = "Client of the quiesce service: begin, end, fsfreeze-hook (the same commands as quiesce's, in a small binary for hooks)",
    long_about = "Client of the quiesce service (`quiesce serve`) at $QUIESCE_SOCKET (default /run/quiesce/quiesce.sock): \
                  the same commands, arguments and exit statuses as `quiesce begin`, `quiesce end` and `quiesce fsfreeze-hook`, \
                  in a small binary that starts faster — what agents' hooks (qemu-ga, the Azure extension, Velero) run."
)]
pub struct ClientCli {
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// The client commands, a group of subcommands in both binaries.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Begin a two-phase session through the service: pre hooks, and a native freeze if asked.
    Begin(BeginArgs),
    /// End the begun session: thaw if quiesce froze, post hooks, report.
    End(EndArgs),
    /// qemu-ga's fsfreeze hook: `freeze` begins an external session, `thaw` ends it.
    #[command(name = "fsfreeze-hook")]
    FsfreezeHook(HookArgs),
}

impl ClientCommand {
    pub fn run(self) -> ExitCode {
        match self {
            ClientCommand::Begin(args) => begin(args),
            ClientCommand::End(args) => end(args),
            ClientCommand::FsfreezeHook(args) => fsfreeze_hook(args),
        }
    }
}

#[derive(Args)]
pub struct BeginArgs {
    /// Who freezes: quiesce (native), someone else (external), nobody (none).
    #[arg(long, value_enum, default_value = "native")]
    pub freeze: FreezeMode,
    /// Freeze this mount point (repeatable; a native freeze needs at least one, or [freeze] mounts).
    #[arg(long = "mount", value_name = "DIR")]
    pub mounts: Vec<PathBuf>,
    /// End the session automatically after this long (default: max-freeze, or [service] external_hold_secs).
    #[arg(long, value_name = "SECS", value_parser = crate::duration::parse_secs)]
    pub hold: Option<Duration>,
    /// Name the session after its agent (e.g. azure, velero): `end --tag` the same then ends it and no other agent's.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// A pre hook that failed, even under on_failure = "continue", aborts the session at once (post hooks run,
    /// locks are released) and exits 4: for agents that fail their backup on a failed pre hook (Velero's onError: Fail).
    #[arg(long)]
    pub abort_on_error: bool,
    /// Print the service's reply as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EndArgs {
    /// The session to end (default: the begun one, if it has --tag's tag, or none without --tag).
    #[arg(value_name = "SESSION")]
    pub session: Option<String>,
    /// End the begun session only if `begin --tag` gave it this tag.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// The snapshot was taken (the default).
    #[arg(long, conflicts_with = "snapshot_failed")]
    pub snapshot_taken: bool,
    /// The snapshot failed or was not taken.
    #[arg(long)]
    pub snapshot_failed: bool,
    /// What the snapshot is known by (lands in report.snapshot.ids).
    #[arg(long, value_name = "ID")]
    pub snapshot_id: Option<String>,
    /// Exit 0 when no begun session matches (nothing left to end: the pre script already ended it, or its hold did).
    #[arg(long)]
    pub missing_ok: bool,
    /// Print the service's reply ({report, exit_code}) as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum HookAction {
    Freeze,
    Thaw,
}

#[derive(Args)]
pub struct HookArgs {
    #[arg(value_enum)]
    pub action: HookAction,
}

/// One request to the service at `$QUIESCE_SOCKET`.
fn call(op: &str, args: serde_json::Map<String, serde_json::Value>) -> Result<serde_json::Map<String, serde_json::Value>, ClientError> {
    Client::connect(&socket_from_env())?.call(op, args)
}

/// The exit status and message for a failed call: 5 unreachable, 2 a
/// request the service called malformed, 4 anything else (not allowed to
/// use the service, or a refusal: no snapshot may be taken).
fn call_failed(e: &ClientError) -> ExitCode {
    eprintln!("quiesce: {e}");
    match e {
        ClientError::Unreachable { .. } | ClientError::BadReply { .. } | ClientError::Timeout { .. } => ExitCode::from(UNREACHABLE),
        ClientError::Refused { code, .. } if code == "BadRequest" => ExitCode::from(USAGE),
        ClientError::Refused { .. } | ClientError::NotAllowed { .. } => ExitCode::from(4),
    }
}

/// The tag qemu-ga's hook begins and ends its sessions with.
pub const QEMU_GA_TAG: &str = "qemu-ga";

fn begin_request(
    freeze: FreezeMode,
    mounts: &[PathBuf],
    hold: Option<Duration>,
    tag: Option<&str>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("freeze".into(), freeze.as_str().into());
    if let Some(t) = tag {
        m.insert("tag".into(), t.into());
    }
    if !mounts.is_empty() {
        let abs: Vec<String> = mounts.iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string()).collect();
        m.insert("mounts".into(), abs.into());
    }
    if let Some(h) = hold {
        m.insert("hold_secs".into(), h.as_secs_f64().into());
    }
    m
}

fn begin(args: BeginArgs) -> ExitCode {
    let reply = match call("begin", begin_request(args.freeze, &args.mounts, args.hold, args.tag.as_deref())) {
        Ok(r) => r,
        Err(e) => return call_failed(&e),
    };
    let proceed = reply.get("proceed") == Some(&serde_json::Value::Bool(true));
    if args.json {
        println!("{}", serde_json::Value::Object(reply.clone()));
    } else {
        println!("{}", reply.get("session_id").and_then(|v| v.as_str()).unwrap_or(""));
        for e in reply.get("errors").and_then(|v| v.as_array()).into_iter().flatten() {
            eprintln!("quiesce: {}: {}", e["code"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or(""));
        }
    }
    if !proceed {
        return ExitCode::from(4);
    }
    if args.abort_on_error && abort_if_a_pre_hook_failed(&reply) {
        eprintln!("quiesce: a pre hook failed: no snapshot should be taken");
        return ExitCode::from(4);
    }
    ExitCode::SUCCESS
}

/// A session that proceeds although a pre hook failed (`on_failure =
/// "continue"`) is aborted here, for agents that must not snapshot then:
/// its post hooks run and its locks are released now, not at its hold.
/// True if a pre hook failed; says on stderr whether the abort went through.
fn abort_if_a_pre_hook_failed(reply: &serde_json::Map<String, serde_json::Value>) -> bool {
    let failed = reply.get("errors").and_then(|v| v.as_array()).is_some_and(|a| !a.is_empty());
    if failed {
        let mut m = serde_json::Map::new();
        if let Some(id) = reply.get("session_id").cloned() {
            m.insert("session_id".into(), id);
        }
        match call("abort", m) {
            Ok(_) => eprintln!("quiesce: a pre hook failed; session aborted (post hooks ran, locks released)"),
            Err(e) => eprintln!("quiesce: a pre hook failed, and aborting the session failed ({e}): it ends at its hold deadline"),
        }
    }
    failed
}

fn end_request(
    session: Option<String>,
    tag: Option<&str>,
    taken: bool,
    snapshot_id: Option<String>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    if let Some(s) = session {
        m.insert("session_id".into(), s.into());
    }
    if let Some(t) = tag {
        m.insert("tag".into(), t.into());
    }
    m.insert("snapshot".into(), if taken { "taken" } else { "failed" }.into());
    if let Some(id) = snapshot_id {
        m.insert("snapshot_id".into(), id.into());
    }
    m
}

fn end(args: EndArgs) -> ExitCode {
    let reply = match call("end", end_request(args.session, args.tag.as_deref(), !args.snapshot_failed, args.snapshot_id)) {
        Ok(r) => r,
        Err(ClientError::Refused { code, message }) if code == "UnknownSession" && args.missing_ok => {
            eprintln!("quiesce: {code}: {message}; nothing left to end (--missing-ok)");
            return ExitCode::SUCCESS;
        }
        Err(e) => return call_failed(&e),
    };
    let code = reply.get("exit_code").and_then(|v| v.as_u64()).and_then(|c| u8::try_from(c).ok()).unwrap_or(4);
    if args.json {
        println!("{}", serde_json::Value::Object(reply));
    } else if let Some(r) = reply.get("report") {
        println!(
            "session {}: {} (snapshot {})",
            r["session_id"].as_str().unwrap_or("?"),
            r["consistency"].as_str().unwrap_or("?"),
            if r["snapshot_taken"] == true { "taken" } else { "not taken" }
        );
        for e in r["errors"].as_array().into_iter().flatten() {
            println!("  error {}: {}", e["code"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or(""));
        }
    }
    ExitCode::from(code)
}

/// qemu-ga runs its hook with stdio on /dev/null and judges it by its exit
/// status alone: nothing here reads stdin or needs a terminal, and the
/// little it writes (stderr, on failure) cannot block.
fn fsfreeze_hook(args: HookArgs) -> ExitCode {
    match args.action {
        HookAction::Freeze => {
            let reply = match call("begin", begin_request(FreezeMode::External, &[], None, Some(QEMU_GA_TAG))) {
                Ok(r) => r,
                Err(e) => return call_failed(&e),
            };
            if reply.get("proceed") != Some(&serde_json::Value::Bool(true)) {
                // The service already ended it (post hooks ran, locks released).
                eprintln!("quiesce: the session could not go on; qemu-ga must not freeze");
                return ExitCode::from(4);
            }
            if abort_if_a_pre_hook_failed(&reply) {
                eprintln!("quiesce: qemu-ga must not freeze");
                return ExitCode::from(4);
            }
            ExitCode::SUCCESS
        }
        HookAction::Thaw => match call("end", end_request(None, Some(QEMU_GA_TAG), true, None)) {
            Ok(_) => ExitCode::SUCCESS,
            // qemu-ga also calls thaw after a failed freeze: nothing of its own
            // to end (the tag leaves another agent's session alone).
            Err(ClientError::Refused { code, .. }) if code == "UnknownSession" => ExitCode::SUCCESS,
            // A service that is stopping ends its session itself; one that is
            // gone took its plugin connections along. qemu-ga has thawed, and
            // a failing hook would fail its thaw, and the agent's snapshot.
            Err(e @ (ClientError::Unreachable { .. } | ClientError::BadReply { .. })) => {
                eprintln!("quiesce: {e}; no session is left to end");
                ExitCode::SUCCESS
            }
            Err(ClientError::Refused { code, message }) if code == "Interrupted" => {
                eprintln!("quiesce: {code}: {message}; it ends its session itself");
                ExitCode::SUCCESS
            }
            Err(e) => call_failed(&e),
        },
    }
}
