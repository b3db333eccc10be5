//! The `quiesce` command: parses arguments, calls the library, prints.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use quiesce::hooks::wasm;
use quiesce::interrupt::Interrupt;
use quiesce::report::Report;
use quiesce::rundir::RunDir;
use quiesce::service;
use quiesce::service::commands::{ClientCli, ClientCommand, USAGE};
use quiesce::session::{self, Session, SessionOptions};
use quiesce::snapshot::ShellCommand;
use quiesce::{check, doctor, freeze, logging, status};

mod points_cli;

mod generate_docs;

#[derive(Parser)]
#[command(name = "quiesce", version, about = "Application-consistent disk snapshots: hooks, native freeze, truthful report")]
struct Cli {
    /// Support log (default /var/log/quiesce/quiesce.log, or $QUIESCE_LOG_FILE).
    #[arg(long, global = true, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Debug-level log records.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One full session: pre hooks → freeze → snapshot → thaw → post hooks.
    Snapshot(SnapshotArgs),
    /// Dry run: parse the config, check permissions and paths, plan the freeze.
    Check(CheckArgs),
    /// Whether a session is running and which file systems are frozen.
    Status(StatusArgs),
    /// Emergency: thaw frozen file systems.
    Thaw(ThawArgs),
    /// WebAssembly plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Recovery points: one per session that took a snapshot.
    #[command(subcommand)]
    Points(points_cli::PointsCommand),
    /// Run the local service that agents drive sessions through (begin/end).
    Serve(ServeArgs),
    #[command(flatten)]
    Client(ClientCommand),
    /// Diagnosis: each finding with a stable code, its cause and the fix. Exit 0 healthy (warnings allowed), 1 problems.
    Doctor(DoctorArgs),
    /// Writes man pages and shell completions for this CLI into DIR (packaging).
    #[command(hide = true)]
    GenerateDocs {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Legacy JSON or native TOML; reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Default: $QUIESCE_SOCKET, [service] socket, /run/quiesce/quiesce.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Args)]
struct DoctorArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the diagnosis as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// WIT version and world, imports, requested grants, size, whether a compiled copy is cached.
    Inspect(InspectArgs),
    /// Create a plugin crate (Rust, quiesce-plugin-sdk) that builds for wasm32-wasip2 as generated.
    New(NewArgs),
}

#[derive(Args)]
struct NewArgs {
    /// Crate name (a-z, 0-9, '-', '_'); the crate is created in DIR/NAME.
    #[arg(value_name = "NAME")]
    name: String,
    /// Where to create it (default: the current directory).
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Depend on the SDK at this path instead of a copy inside the crate.
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
}

#[derive(Args)]
struct InspectArgs {
    /// The plugin component (.wasm).
    #[arg(value_name = "FILE.wasm")]
    file: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ConfigArgs {
    /// Legacy JSON or native TOML (detected from the content).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Restrict freezing to this mount point (repeatable).
    #[arg(long = "mount", value_name = "DIR")]
    mounts: Vec<PathBuf>,
}

#[derive(Args)]
struct SnapshotArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Takes the snapshot: run by /bin/sh -c while frozen; exit 0 = taken.
    #[arg(long, value_name = "CMD")]
    snapshot_cmd: Option<String>,
    /// Longest the file systems may stay frozen, even if quiesce is killed.
    #[arg(long, value_name = "SECS", value_parser = quiesce::duration::parse_secs)]
    max_freeze: Option<Duration>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The snapshot command a session would run (described, not run).
    #[arg(long, value_name = "CMD")]
    snapshot_cmd: Option<String>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// Only probe these mount points.
    #[arg(long = "mount", value_name = "DIR")]
    mounts: Vec<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct ThawTarget {
    /// Every eligible file system.
    #[arg(long)]
    all: bool,
    /// Only this mount point (repeatable).
    #[arg(long = "mount", value_name = "DIR")]
    mounts: Vec<PathBuf>,
}

#[derive(Args)]
struct ThawArgs {
    #[command(flatten)]
    target: ThawTarget,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before logging::init: a package build must not create /var/log/quiesce.
    if let Command::GenerateDocs { out } = &cli.command {
        return match generate_docs::generate([Cli::command(), ClientCli::command()], out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("quiesce: cannot write the docs into {}: {e}", out.display());
                ExitCode::from(1)
            }
        };
    }
    logging::init(cli.log_file.clone(), cli.verbose);
    match cli.command {
        Command::Snapshot(args) => snapshot(args),
        Command::Check(args) => run_check(args),
        Command::Status(args) => run_status(args),
        Command::Thaw(args) => run_thaw(args),
        Command::Plugin(PluginCommand::Inspect(args)) => run_inspect(args),
        Command::Doctor(args) => run_doctor(args),
        Command::Plugin(PluginCommand::New(args)) => run_plugin_new(args),
        Command::Points(cmd) => points_cli::run(cmd),
        Command::Serve(args) => run_serve(args),
        Command::Client(c) => c.run(),
        Command::GenerateDocs { .. } => ExitCode::SUCCESS, // handled above
    }
}

fn run_serve(args: ServeArgs) -> ExitCode {
    let socket = args.socket.map(|p| std::path::absolute(&p).unwrap_or(p));
    match service::serve(service::ServeOptions { config: args.config, socket }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("quiesce serve: {e}");
            ExitCode::from(1)
        }
    }
}

fn snapshot(args: SnapshotArgs) -> ExitCode {
    let config = session::load_config(args.config.config.as_deref());
    let opts = SessionOptions {
        run_dir: None,
        mounts: args.config.mounts,
        max_freeze: args.max_freeze,
        provider: args.snapshot_cmd.map(|command| Box::new(ShellCommand::new(command)) as _),
        ..Default::default()
    };
    let session = match Session::prepare(config, opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("quiesce: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = runtime.block_on(async {
        let interrupt = match Interrupt::on_signals() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("cannot install signal handlers ({e}); a signal will end quiesce at once");
                Interrupt::never()
            }
        };
        session.run(interrupt).await
    });
    print_report(&report, args.json);
    ExitCode::from(report.exit_code() as u8)
}

fn print_report(report: &Report, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("quiesce: cannot serialize the report: {e}"),
        }
        return;
    }
    println!("{}", report.summary());
    for h in &report.hooks {
        use quiesce::report::Outcome;
        let outcome = match h.outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed out",
            Outcome::Skipped => "skipped",
            Outcome::Refused => "refused",
        };
        let attempts = if h.attempts == 1 { "1 attempt".to_owned() } else { format!("{} attempts", h.attempts) };
        println!("  hook {} ({}): {outcome} after {attempts}, {:.1} ms", h.name, h.phase.name(), h.duration_ms);
    }
    for m in &report.freeze.mounts {
        println!("  froze {} ({}) in {:.3} ms", m.path.display(), m.fs_type, m.freeze_ms);
    }
    if let Some(w) = report.freeze.window_ms {
        println!("  frozen for {w:.3} ms, of which quiesce itself {:.3} ms", report.freeze.overhead_ms.unwrap_or(0.0));
    }
    if let Some(p) = &report.snapshot.provider {
        println!("  snapshot by {p} in {:.3} ms", report.snapshot.duration_ms);
    } else if let Some(m) = &report.snapshot.message {
        println!("  {m}");
    }
    for e in &report.errors {
        println!("  error {}: {}", e.code.as_str(), e.message);
    }
}

/// The async runtime every command that runs hooks or plugins needs.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        eprintln!("quiesce: cannot start the async runtime: {e}");
        ExitCode::from(4)
    })
}

fn run_check(args: CheckArgs) -> ExitCode {
    let config = session::load_config(args.config.config.as_deref());
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = runtime.block_on(check::check(config, &args.config.mounts, args.snapshot_cmd.as_deref(), &session::cache_dir_from_env()));
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print_check(&report);
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_check(r: &check::CheckReport) {
    use quiesce::config::{Format, OnFailure};
    match (&r.config, r.format) {
        (Some(p), Some(f)) => {
            let kind = match f {
                Format::Legacy => "legacy Azure-style JSON",
                Format::Native => "quiesce TOML",
                Format::Builtin => "built-in",
            };
            println!("config: {} ({kind})", p.display())
        }
        (Some(p), None) => println!("config: {} (cannot be used, see the problems below)", p.display()),
        (None, _) => println!("config: built-in default (no hooks)"),
    }
    for h in &r.hooks {
        let on_failure = match h.on_failure {
            OnFailure::Continue => "the snapshot is still taken, with a lower consistency label",
            OnFailure::Abort => "no snapshot is taken",
        };
        println!("hook {}: each attempt may take up to {} s; if it fails, {on_failure}", h.name, h.timeout_s);
        if let Some(p) = &h.plugin {
            println!("  plugin {}: {}", p.path.display(), p.status);
            println!("    granted: {}", if p.granted.is_empty() { "nothing".into() } else { p.granted.join(", ") });
            if !p.not_granted.is_empty() {
                println!("    needed but not granted (calls needing them will be refused): {}", p.not_granted.join(", "));
            }
            for d in &p.default_only {
                println!(
                    "    not needed: {} (the plugin asks for it as the default {}; this config sets {} = {})",
                    d.grant, d.param, d.param, d.configured
                );
            }
            for w in &p.grant_warnings {
                println!("    warning: {w}");
            }
            print_plugin_check(p);
        }
        for (phase, s) in [("pre", &h.pre), ("post", &h.post)] {
            if let Some(s) = s {
                let args = if s.args.is_empty() {
                    "no arguments".to_owned()
                } else {
                    format!("arguments {}", s.args.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" "))
                };
                let attempts = if s.attempts == 1 { "1 attempt".to_owned() } else { format!("up to {} attempts", s.attempts) };
                println!("  {phase} script {} ({args}, {attempts}): {}", s.path.display(), s.status);
            }
        }
    }
    if r.freeze.enabled {
        println!("freeze, in this order (thawed in reverse), for at most {} s:", r.freeze.max_freeze_s);
        for t in &r.freeze.targets {
            println!("  {} ({} on {})", t.path.display(), t.fs_type, t.source);
        }
        for s in &r.freeze.skipped {
            println!("  not frozen: {} ({}): {}", s.path.display(), s.fs_type, s.reason);
        }
    } else {
        println!("freeze: off (nothing is frozen)");
    }
    println!("snapshot: {}", r.snapshot.as_deref().unwrap_or("none configured (quiesce takes no snapshot)"));
    println!("process containment: {}", r.containment);
    for w in &r.warnings {
        println!("warning: {w}");
    }
    for p in &r.problems {
        println!("problem {}: {}", p.code.as_str(), p.message);
    }
    println!("{}", if r.ok { "check passed" } else { "check found problems" });
}

/// What a plugin's own `check` found, one plain sentence per finding.
fn print_plugin_check(p: &check::PluginCheck) {
    let Some(run) = &p.check else { return };
    if !run.supported {
        println!(
            "    the plugin speaks quiesce:plugin@{}, which cannot check its connection and privileges in advance \
             (rebuilt against quiesce-plugin-sdk {} or later, it can)",
            run.wit_version,
            wasm::WitVersion::NEWEST
        );
        return;
    }
    println!("    the plugin's own check (quiesce:plugin@{}, with the grants and params above):", run.wit_version);
    if run.findings.is_empty() && run.failed.is_none() {
        println!("      it had nothing to verify");
    }
    for f in &run.findings {
        println!("      {:<8} {} ({})", f.severity.word(), f.message, f.code);
    }
    if let Some(why) = &run.failed {
        println!("      problem  the check did not finish: {why}");
    }
    for d in &run.denials {
        println!("      problem  refused during the check: {d}");
    }
}

fn run_status(args: StatusArgs) -> ExitCode {
    let st = match status::status(&RunDir::from_env(), &args.mounts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("quiesce: {e}");
            return ExitCode::from(USAGE);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&st).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    match &st.session {
        Some(s) => {
            println!("session {} running (pid {}), phase {}", s.session_id, s.pid, s.phase);
            if let Some(since) = s.frozen_since_unix_ms {
                let ago = quiesce::rundir::unix_ms().saturating_sub(since) as f64 / 1e3;
                let guardian = s.guardian_pid.map(|p| format!("guardian pid {p}")).unwrap_or_else(|| "guardian pid not known".into());
                println!("froze {} mount(s) {ago:.1} s ago ({guardian}, thaws by itself after {} s)", s.frozen.len(), s.max_freeze_s);
            }
        }
        None if st.session_running => println!("a session is running"),
        None => println!("no session running"),
    }
    if st.frozen.is_empty() {
        println!("no file system is frozen");
    }
    for f in &st.frozen {
        println!("frozen: {} ({}) by {}", f.path.display(), f.fs_type, f.frozen_by);
    }
    for (p, e) in &st.unknown {
        println!("unknown: {}: {e}", p.display());
    }
    for k in &st.skipped {
        println!("not frozen by a session: {} ({}): {}", k.path.display(), k.fs_type, k.reason);
    }
    ExitCode::SUCCESS
}

fn run_thaw(args: ThawArgs) -> ExitCode {
    let results = if args.target.all { freeze::thaw_all() } else { freeze::thaw_mounts(&args.target.mounts) };
    if args.json {
        println!("{}", serde_json::to_string(&results).unwrap_or_default());
    } else {
        for r in &results {
            println!("{}: {}", r.path.display(), r.message);
        }
    }
    if results.iter().any(|r| r.outcome == freeze::ThawOutcome::Failed) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_plugin_new(args: NewArgs) -> ExitCode {
    use wasm::scaffold::{new_plugin, SdkSource};
    let sdk = match args.sdk {
        Some(p) => SdkSource::Path(std::path::absolute(&p).unwrap_or(p)),
        None => SdkSource::Embedded,
    };
    match new_plugin(&args.name, &args.dir, &sdk) {
        Ok(root) => {
            println!("created plugin crate {} (quiesce:plugin@{})", root.display(), wasm::WitVersion::NEWEST);
            println!("  build:   cd {} && cargo build --release", root.display());
            println!(
                "  inspect: quiesce plugin inspect {}/target/wasm32-wasip2/release/{}.wasm",
                root.display(),
                args.name.replace('-', "_")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quiesce: {e}");
            ExitCode::from(USAGE)
        }
    }
}

fn run_inspect(args: InspectArgs) -> ExitCode {
    let file = std::path::absolute(&args.file).unwrap_or(args.file);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // Only root's sessions use the cache; anyone else inspects in memory and
    // creates nothing (not even the cache directory).
    let engine = if nix::unistd::geteuid().is_root() {
        wasm::WasmEngine::new(&session::cache_dir_from_env())
    } else {
        wasm::WasmEngine::without_cache()
    };
    let result = engine.and_then(|engine| runtime.block_on(wasm::inspect(&engine, &file)));
    match (result, args.json) {
        (Ok(i), true) => println!("{}", serde_json::to_string(&i).unwrap_or_default()),
        (Ok(i), false) => {
            println!("plugin {} ({} bytes, sha256 {})", i.path, i.size, i.sha256);
            println!("  {} {}: quiesces {}", i.name, i.version, if i.quiesces.is_empty() { "(not said)" } else { &i.quiesces });
            println!("  WIT: quiesce:plugin@{}, world {}", i.wit_version, i.world);
            println!(
                "  can check its connection and privileges in advance (quiesce check): {}",
                if i.has_check { "yes" } else { "no (quiesce:plugin@0.1.0 has no check)" }
            );
            println!("  imports: {}", i.imports.join(", "));
            println!("  exports: {}", i.exports.join(", "));
            println!(
                "  requested grants: {}",
                if i.requested_grants.is_empty() { "none".to_owned() } else { i.requested_grants.join(", ") }
            );
            for p in &i.params {
                let d = p.default.as_deref().map(|d| format!(" (default {d})")).unwrap_or_else(|| " (required)".into());
                println!("  param {}{d}: {}", p.name, p.description);
            }
            if i.cache_used {
                println!(
                    "  compiled copy was cached: {} ({})",
                    if i.cached { "yes" } else { "no (compiled now, cached for next time)" },
                    i.cache_dir
                );
            } else {
                println!("  compiled in memory (nothing cached)");
            }
            println!("  a session would accept this file where it lies: {}", i.acceptance);
        }
        (Err(e), json) => {
            let code = match e {
                wasm::PluginError::Grant(_) => "IncorrectJSONConfigFile",
                _ => "PluginLoadFailed",
            };
            if json {
                println!("{}", serde_json::json!({ "ok": false, "code": code, "message": e.to_string() }));
            } else {
                eprintln!("quiesce: {code}: {e}");
            }
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn run_doctor(args: DoctorArgs) -> ExitCode {
    let opts = doctor::DoctorOptions::from_env(args.config.config, args.config.mounts);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let d = match runtime.block_on(doctor::diagnose(&opts)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("quiesce: {e}");
            return ExitCode::from(USAGE);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&d).unwrap_or_default());
        return ExitCode::from(d.exit_code());
    }
    for c in &d.checks {
        println!("{:<12} {}", c.check, c.summary);
    }
    for f in &d.findings {
        let severity = match f.severity {
            doctor::Severity::Error => "PROBLEM",
            doctor::Severity::Warning => "warning",
            doctor::Severity::Info => "note",
        };
        println!();
        println!("{severity} {} ({})", f.code.as_str(), f.check);
        println!("  cause: {}", f.cause);
        println!("  fix:   {}", f.fix);
    }
    println!();
    println!(
        "{}",
        match (d.errors, d.warnings) {
            (0, 0) => "healthy".to_string(),
            (0, w) => format!("healthy, with {w} warning(s)"),
            (e, w) => format!("{e} problem(s), {w} warning(s)"),
        }
    );
    ExitCode::from(d.exit_code())
}
