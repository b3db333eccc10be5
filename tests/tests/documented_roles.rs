//! The least-privilege database roles the docs tell admins to create (issue
//! 12), proven against real servers. The statements are read from the docs
//! at test time — the README's role table and the comment block of each
//! `packaging/examples/*.toml` — so a later edit of the docs is tested too.
//! For each database the documented statements are run as the superuser on a
//! throwaway server (data on the test's loop fs), the documented hook config
//! is pointed at that server with the role's password in a granted file, and
//! then:
//! - `quiesce check` passes with nothing but `passed` findings (bar the ones
//!   a least-privileged role cannot avoid, named per test);
//! - a real `quiesce snapshot` (freezing the loop fs) is `AppConsistent`;
//! - where the docs grant several privileges, each one dropped in turn makes
//!   `check` (or the session) fail with the finding that names it: nothing
//!   documented is more than needed. (`wit_0_2.rs` already proves the
//!   findings for roles missing everything; here it is one at a time.)

use std::fs;
use std::path::{Path, PathBuf};

use quiesce_tests::db::*;
use quiesce_tests::plugins::{install_plugin, plugin_findings};
use quiesce_tests::*;

/// The password the tests give every documented role.
const ROLE_PASSWORD: &str = "documented-role-pw";

fn repo_file(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// ------------------------------------------------------------ reading the docs

/// Splits a Markdown table row into its cells (`\|` is a pipe inside a cell).
fn cells(row: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = row.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.iter().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()
}

/// The second cell of the README role table's row whose first cell (without
/// backticks) starts with `label`.
fn readme_role_row(label: &str) -> String {
    let readme = repo_file("README.md");
    let mut lines = readme.lines().skip_while(|l| cells(l) != ["plugin", "least-privilege role"]);
    assert!(lines.next().is_some(), "README.md has no table with the header `| plugin | least-privilege role |`");
    lines
        .skip(1) // |---|---|
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(cells)
        .find(|c| c.len() >= 2 && c[0].replace('`', "").starts_with(label))
        .map(|c| c[1].clone())
        .unwrap_or_else(|| panic!("README.md's least-privilege role table has no row for {label:?}"))
}

/// The code spans of a Markdown text.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Statements a superuser runs: SQL (split at `;`) or a Redis `ACL SETUSER`.
fn is_statement(s: &str) -> bool {
    let first = s.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    matches!(first.as_str(), "CREATE" | "GRANT" | "ALTER" | "REVOKE") || s.to_ascii_uppercase().starts_with("ACL SETUSER")
}

/// A pg_hba.conf line.
fn is_hba_line(s: &str) -> bool {
    matches!(s.split_whitespace().next(), Some("local" | "host" | "hostssl" | "hostnossl"))
}

/// What a doc says to set up: statements and pg_hba.conf lines, and where it said so.
#[derive(Debug, Default)]
struct Documented {
    source: String,
    statements: Vec<String>,
    hba: Vec<String>,
}

impl Documented {
    fn push_span(&mut self, span: &str) {
        let span = span.trim();
        if is_hba_line(span) {
            self.hba.push(span.split_whitespace().collect::<Vec<_>>().join(" "));
        } else if span.to_ascii_uppercase().starts_with("ACL ") {
            self.statements.push(span.to_owned());
        } else if is_statement(span) {
            self.statements.extend(span.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned));
        }
    }

    /// The statements of the README role table's row `label`.
    fn readme(label: &str) -> Documented {
        let mut d = Documented { source: format!("README.md, role table row {label:?}"), ..Default::default() };
        for span in code_spans(&readme_role_row(label)) {
            d.push_span(&span);
        }
        d.expect_some();
        d
    }

    /// The statements in the comment block of `packaging/examples/NAME.toml`,
    /// as a client would run them pasted in (`--` lines are SQL comments), and
    /// its pg_hba.conf lines (`local …`/`host …`, or after `pg_hba.conf:`).
    fn example(name: &str) -> (Documented, String) {
        let rel = format!("packaging/examples/{name}.toml");
        let text = repo_file(&rel);
        let mut d = Documented { source: rel, ..Default::default() };
        for line in text.lines().filter_map(|l| l.strip_prefix('#')).map(str::trim) {
            let line = line.strip_prefix("pg_hba.conf:").map(str::trim).unwrap_or(line);
            if is_hba_line(line) || is_statement(line) {
                d.push_span(line);
            }
        }
        d.expect_some();
        (d, text)
    }

    fn expect_some(&self) {
        assert!(!self.statements.is_empty(), "{}: found no statements (CREATE …/GRANT …/ACL SETUSER …) to run", self.source);
    }

    /// The statements with the documented password placeholder replaced by
    /// [`ROLE_PASSWORD`]; fails when no statement has one.
    fn with_password(&self) -> Vec<String> {
        let mut replaced = false;
        let out: Vec<String> = self
            .statements
            .iter()
            .map(|s| {
                let mut s = s.clone();
                for placeholder in ["'…'", "'...'", "'PASSWORD'"] {
                    if s.contains(placeholder) {
                        s = s.replace(placeholder, &format!("'{ROLE_PASSWORD}'"));
                        replaced = true;
                    }
                }
                if s.to_ascii_uppercase().starts_with("ACL SETUSER") {
                    s = s
                        .split_whitespace()
                        .map(|t| {
                            if t.starts_with('>') {
                                replaced = true;
                                format!(">{ROLE_PASSWORD}")
                            } else {
                                t.to_owned()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                }
                s
            })
            .collect();
        assert!(replaced, "{}: no password placeholder ('…' or >PASSWORD) in {:?}", self.source, self.statements);
        out
    }

    /// The role's name: `CREATE ROLE name`, `CREATE USER 'name'@…`, `ACL SETUSER name`.
    fn role_name(&self) -> String {
        self.statements
            .iter()
            .find_map(|s| {
                let w: Vec<&str> = s.split_whitespace().collect();
                match (w.first()?.to_ascii_uppercase().as_str(), w.get(1)?.to_ascii_uppercase().as_str()) {
                    ("CREATE", "ROLE" | "USER") | ("ACL", "SETUSER") => {
                        Some(w.get(2)?.split('@').next()?.trim_matches(['\'', '"', '`']).to_owned())
                    }
                    _ => None,
                }
            })
            .unwrap_or_else(|| panic!("{}: no CREATE ROLE/CREATE USER/ACL SETUSER in {:?}", self.source, self.statements))
    }
}

/// The value of `key = "…"` in a TOML text (first occurrence, not in a comment).
fn toml_value(text: &str, key: &str) -> Option<String> {
    let pat = format!("{key} = \"");
    text.lines().filter(|l| !l.trim_start().starts_with('#')).find_map(|l| {
        let i = l.match_indices(&pat).map(|(i, _)| i).find(|&i| i == 0 || !l[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))?;
        let rest = &l[i + pat.len()..];
        Some(rest[..rest.find('"')?].to_owned())
    })
}

/// The plugin `[[hook]]` named `name` from the README's example config blocks.
fn readme_hook(name: &str) -> String {
    let readme = repo_file("README.md");
    readme
        .split("```toml")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .flat_map(|block| block.split("[[hook]]").skip(1))
        .find(|hook| hook.lines().any(|l| l.trim() == format!("name = \"{name}\"")) && toml_value(hook, "plugin").is_some())
        .map(|hook| format!("[[hook]]{hook}"))
        .unwrap_or_else(|| panic!("README.md has no ```toml block with a plugin [[hook]] named {name:?}"))
}

/// One database's documented role: its README row and the comment block of
/// its packaging example (the same role name in both), and the hook config
/// each comes with (the README's config block, the example file's `[[hook]]`).
struct Docs {
    readme: Documented,
    example: Documented,
    role: String,
    readme_hook: String,
    example_hook: String,
}

impl Docs {
    /// `row`: the README role table's row; `name`: the example file and the hook.
    fn load(row: &str, name: &str) -> Docs {
        let readme = Documented::readme(row);
        let (example, text) = Documented::example(name);
        let role = readme.role_name();
        assert_eq!(example.role_name(), role, "{}: another role than the README's row {row:?}", example.source);
        let example_hook = text.find("[[hook]]").map(|i| text[i..].to_owned());
        let example_hook = example_hook.unwrap_or_else(|| panic!("{}: no [[hook]]", example.source));
        Docs { readme, example, role, readme_hook: readme_hook(name), example_hook }
    }

    /// (docs, hook config) for the README and the example.
    fn both(&self) -> [(&Documented, &str); 2] {
        [(&self.readme, &self.readme_hook), (&self.example, &self.example_hook)]
    }
}

/// A documented config pointed at the test's server: the documented plugin
/// path, target and password file replaced wherever they occur (params and
/// grants); its `user` must be the documented role's.
fn localize(config: &str, source: &str, role: &str, plugin: &Path, target: &str, password_file: &Path) -> String {
    let value = |key: &str| toml_value(config, key).unwrap_or_else(|| panic!("{source}: the hook config has no {key} = \"…\""));
    assert_eq!(value("user"), role, "{source}: the hook's user is not the role the docs create");
    config
        .replace(&value("plugin"), &plugin.display().to_string())
        .replace(&value("target"), target)
        .replace(&value("password_file"), &password_file.display().to_string())
}

// ------------------------------------------------------------ running quiesce

/// One documented role under test: its scratch (the loop fs the server's
/// data is on), the installed plugin and the role's password file.
struct Rig {
    m: MountedScratch,
    plugin: PathBuf,
    password_file: PathBuf,
}

impl Rig {
    /// `mib`: the loop fs's size (sparse), room for the server's data.
    fn new(name: &str, plugin: &str, mib: u32) -> Rig {
        let s = Scratch::new(name);
        let m = MountedScratch { mnt: LoopMount::with_size(&s.path, "mnt", Fs::Ext4, mib), s };
        let plugin = install_plugin(&m.s, plugin);
        let password_file = m.file("secret");
        write_mode(&password_file, &format!("{ROLE_PASSWORD}\n"), 0o600);
        Rig { m, plugin, password_file }
    }

    fn config(&self, name: &str, body: &str) -> PathBuf {
        self.m.s.config(name, body)
    }

    /// `quiesce check --json --mount LOOPFS`: the report, its exit status matching `ok`.
    fn check(&self, config: &Path) -> serde_json::Value {
        let r = check_json(&self.m.s, &self.m.file("cache"), config, self.m.mnt.path());
        for w in r["warnings"].as_array().into_iter().flatten() {
            eprintln!("[documented_roles] check warning: {w}");
        }
        r
    }

    /// A real session freezing the loop fs, `--snapshot-cmd true`.
    fn snapshot(&self, config: &Path) -> Run {
        run_json(quiesce_snapshot(&self.m.s, config, self.m.mnt.path(), "true"))
    }
}

/// `check` passes: `ok`, and every plugin finding `passed` except the codes
/// in `unavoidable` (which must then be there, as `info`).
fn assert_check_passes(source: &str, r: &serde_json::Value, unavoidable: &[&str]) {
    assert_eq!(r["ok"], true, "{source}: quiesce check is not ok with the documented role: {r:#}");
    let all = plugin_findings(r);
    let not_passed: Vec<&(String, String, String)> = all.iter().filter(|(sev, _, _)| sev != "passed").collect();
    let codes: Vec<&str> = not_passed.iter().map(|(_, c, _)| c.as_str()).collect();
    assert_eq!(codes, unavoidable, "{source}: findings other than passed with the documented role: {not_passed:#?}");
    assert_eq!(r["warnings"].as_array().map(Vec::len), Some(0), "{source}: check warns: {r:#}");
    assert!(not_passed.iter().all(|(sev, _, _)| sev == "info"), "{source}: {not_passed:#?}");
}

/// The finding `code` is there with `severity`; its message.
fn assert_finding(context: &str, r: &serde_json::Value, severity: &str, code: &str) -> String {
    let all = plugin_findings(r);
    let f = all.iter().find(|(_, c, _)| c == code).unwrap_or_else(|| panic!("{context}: no finding {code}: {all:#?}"));
    assert_eq!(f.0, severity, "{context}: {code}: {all:#?}");
    f.2.clone()
}

/// The session with the documented role: `AppConsistent`, exit 0, and the
/// plugin's pre and post both ran and succeeded.
fn assert_session_app_consistent(source: &str, run: &Run, hook: &str) {
    assert_eq!((run.consistency(), run.code()), ("AppConsistent", 0), "{source}: the session with the documented role: {}", run.report);
    for phase in ["pre", "post"] {
        assert_eq!(run.hook(hook, phase)["outcome"], "succeeded", "{source}: {phase}: {}", run.report);
    }
}

// ------------------------------------------------------------ PostgreSQL

fn pg_run(pg: &Postgres, sql: &[String], source: &str) {
    let mut c = pg.connect();
    for s in sql {
        c.simple_query(s).unwrap_or_else(|e| panic!("{source}: `{s}` as the superuser: {e}"));
    }
}

/// Both modes' README rows and the example's comment block, each role
/// created from the docs, logging in only through the documented pg_hba.conf
/// line (every other line rejects the role), over the Unix socket the
/// documented config names.
#[test]
fn postgres_documented_roles_pass_check_and_run_an_app_consistent_session() {
    require!(Root, Postgres, Plugins);
    let docs = Docs::load("postgres, mode = \"checkpoint\"", "postgres");
    let (checkpoint, example, role) = (&docs.readme, &docs.example, &docs.role);
    let backup = Documented::readme("postgres, mode = \"backup\"");
    assert_eq!(&backup.role_name(), role, "{}: another role name than the README's checkpoint row", backup.source);
    for d in [checkpoint, &backup, example] {
        assert!(!d.hba.is_empty(), "{}: no pg_hba.conf line for the role", d.source);
        assert_eq!(d.hba, checkpoint.hba, "{}: another pg_hba.conf line than the README's checkpoint row", d.source);
    }
    // The documented line first; after it, this role is rejected everywhere:
    // the documented line alone must let the plugin in.
    let mut hba = checkpoint.hba.clone();
    hba.extend([format!("local all {role} reject"), format!("host all {role} 0.0.0.0/0 reject")]);

    let rig = Rig::new("roles-pg", "quiesce_postgres", 256);
    let pg = Postgres::start_with(rig.m.mnt.path(), PgOptions { archive: true, hba, ..Default::default() });
    let target = format!("unix:{}/.s.PGSQL.{}", pg.socket_dir.display(), pg.port);
    let readme_backup = docs.readme_hook.replace("mode = \"checkpoint\"", "mode = \"backup\"");
    assert_ne!(readme_backup, docs.readme_hook, "README.md's postgres hook has no mode = \"checkpoint\" to switch to backup");
    // (docs, hook config, the finding the role passes, the one without its GRANT)
    let cases: [(&Documented, &str, &str, &str); 3] = [
        (checkpoint, &docs.readme_hook, "PgCheckpointAllowed", "PgCheckpointNotAllowed"),
        (&backup, &readme_backup, "PgBackupAllowed", "PgBackupNotAllowed"),
        (example, &docs.example_hook, "PgCheckpointAllowed", "PgCheckpointNotAllowed"),
    ];
    let drop_role = [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")];
    for (i, (d, hook, allowed, denied)) in cases.into_iter().enumerate() {
        let statements = d.with_password();
        pg_run(&pg, &statements, &d.source);
        let config = rig.config(&format!("pg{i}.toml"), &localize(hook, &d.source, role, &rig.plugin, &target, &rig.password_file));
        let r = rig.check(&config);
        assert_check_passes(&d.source, &r, &[]);
        assert_finding(&d.source, &r, "passed", allowed);
        let run = rig.snapshot(&config);
        assert_session_app_consistent(&d.source, &run, "postgres");
        let artifact = if allowed == "PgBackupAllowed" { "backup_label" } else { "checkpoint_redo_lsn" };
        assert!(run.artifact("postgres", artifact).is_some(), "{}: no {artifact} artifact: {}", d.source, run.report);
        pg_run(&pg, &drop_role, &d.source);

        // Each documented GRANT is needed: without it, check names it.
        for left_out in statements.iter().filter(|s| s.to_ascii_uppercase().starts_with("GRANT ")) {
            let context = format!("{} without `{left_out}`", d.source);
            pg_run(&pg, &statements.iter().filter(|s| *s != left_out).cloned().collect::<Vec<_>>(), &d.source);
            let r = rig.check(&config);
            assert_eq!(r["ok"], false, "{context}: {r:#}");
            let msg = assert_finding(&context, &r, "error", denied);
            assert!(msg.replace('"', "").contains(left_out.as_str()), "{context}: the finding names another GRANT: {msg}");
            pg_run(&pg, &drop_role, &d.source);
        }
    }
}

// ------------------------------------------------------------ MariaDB

fn my_run(my: &MariaDb, sql: &[String], source: &str) {
    let mut c = my.connect_root();
    for s in sql {
        c.query(s).unwrap_or_else(|e| panic!("{source}: `{s}` as root: {e}"));
    }
}

/// `GRANT a, b ON *.* TO who` → (["a", "b"], "ON *.* TO who").
fn split_grant(stmt: &str) -> Option<(Vec<String>, String)> {
    let rest = stmt.strip_prefix("GRANT ")?;
    let i = rest.find(" ON ")?;
    Some((rest[..i].split(',').map(|p| p.trim().to_owned()).collect(), rest[i + 1..].to_owned()))
}

/// What `check` says when the documented privilege `p` is missing.
fn my_missing_finding(p: &str) -> (&'static str, &'static str) {
    match p.to_ascii_uppercase().as_str() {
        "RELOAD" => ("error", "MyReloadMissing"),
        "PROCESS" => ("warning", "MyProcessMissing"),
        "BINLOG MONITOR" => ("error", "MyBinlogStatusDenied"),
        "REPLICA MONITOR" | "SLAVE MONITOR" => ("error", "MyReplicaStatusDenied"),
        other => {
            panic!("the docs grant {other}, which no check finding asks for: is it needed? (add it here with the finding that proves it)")
        }
    }
}

/// The README row and the example's comment block; then each privilege of
/// the documented GRANT left out in turn: `check` names exactly that one.
#[test]
fn mariadb_documented_user_passes_check_runs_a_session_and_needs_every_documented_privilege() {
    require!(Root, Mariadb, Plugins);
    let docs = Docs::load("mariadb", "mariadb");
    let role = &docs.role;

    let rig = Rig::new("roles-my", "quiesce_mariadb", 512);
    let my = MariaDb::start(rig.m.mnt.path());
    let target = format!("unix:{}", my.socket.display());
    let account = |d: &Documented| {
        let create = d.statements.iter().find(|s| s.to_ascii_uppercase().starts_with("CREATE USER")).expect("CREATE USER");
        create.split_whitespace().nth(2).expect("CREATE USER account").to_owned()
    };
    for (i, (d, hook)) in docs.both().into_iter().enumerate() {
        my_run(&my, &d.with_password(), &d.source);
        let config = rig.config(&format!("my{i}.toml"), &localize(hook, &d.source, role, &rig.plugin, &target, &rig.password_file));
        let r = rig.check(&config);
        assert_check_passes(&d.source, &r, &[]);
        assert_finding(&d.source, &r, "passed", "MyReloadGranted");
        let run = rig.snapshot(&config);
        assert_session_app_consistent(&d.source, &run, "mariadb");
        let pos = run.artifact_text("mariadb", "binlog_position");
        assert!(pos.contains("file=binlog.") && pos.contains("position="), "{}: binlog_position read under the lock: {pos}", d.source);
        // The same user with the other method the docs name (FLUSH TABLES WITH READ LOCK).
        let ftwrl = fs::read_to_string(&config).unwrap().replace("method = \"backup-stage\"", "method = \"ftwrl\"");
        assert!(ftwrl.contains("method = \"ftwrl\""), "{}: the hook sets no method = \"backup-stage\"", d.source);
        let ftwrl = rig.config(&format!("my{i}-ftwrl.toml"), &ftwrl);
        assert_check_passes(&format!("{} with ftwrl", d.source), &rig.check(&ftwrl), &[]);
        assert_session_app_consistent(&format!("{} with ftwrl", d.source), &rig.snapshot(&ftwrl), "mariadb");
        my_run(&my, &[format!("DROP USER {}", account(d))], &d.source);
    }

    // Each documented privilege is needed: without it, check says which.
    let config =
        rig.config("my-less.toml", &localize(&docs.readme_hook, &docs.readme.source, role, &rig.plugin, &target, &rig.password_file));
    for d in [&docs.readme, &docs.example] {
        let statements = d.with_password();
        let (privileges, on) = statements.iter().find_map(|s| split_grant(s)).unwrap_or_else(|| panic!("{}: no GRANT … ON", d.source));
        assert!(privileges.len() > 1, "{}: {privileges:?}", d.source);
        for left_out in &privileges {
            let context = format!("{} without {left_out}", d.source);
            let kept: Vec<&str> = privileges.iter().filter(|p| *p != left_out).map(String::as_str).collect();
            let sql: Vec<String> = statements
                .iter()
                .map(|s| if split_grant(s).is_some() { format!("GRANT {} {on}", kept.join(", ")) } else { s.clone() })
                .collect();
            my_run(&my, &sql, &d.source);
            let r = rig.check(&config);
            let (severity, code) = my_missing_finding(left_out);
            let msg = assert_finding(&context, &r, severity, code);
            assert!(msg.contains(&format!("GRANT {left_out} ON *.*")), "{context}: {msg}");
            let others: Vec<_> = plugin_findings(&r).into_iter().filter(|(sev, c, _)| sev != "passed" && c != code).collect();
            assert!(others.is_empty(), "{context}: more than {code}: {others:#?}");
            my_run(&my, &[format!("DROP USER {}", account(d))], &d.source);
        }
    }
}

// ------------------------------------------------------------ Redis

/// The `ACL SETUSER` rule as arguments.
fn acl_args(rule: &str) -> Vec<String> {
    rule.split_whitespace().map(str::to_owned).collect()
}

fn redis_run(r: &Redis, rule: &str, source: &str) {
    let args = acl_args(rule);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    r.connect().cmd(&args).unwrap_or_else(|e| panic!("{source}: `{rule}`: {e}"));
}

fn redis_deluser(r: &Redis, role: &str) {
    r.connect().cmd(&["ACL", "DELUSER", role]).unwrap_or_else(|e| panic!("ACL DELUSER {role}: {e}"));
}

/// What a least-privileged Redis user cannot avoid: `CLIENT UNPAUSE` cannot
/// be probed, and `ACL DRYRUN` would need the `acl` permission.
const REDIS_UNAVOIDABLE: &[&str] = &["RedisUnpauseUnverified"];

/// The README row and the example's comment block on an AOF server and an
/// RDB-only one (where pre runs BGSAVE); with AOF, also without `+bgsave`.
#[test]
fn redis_documented_acl_user_passes_check_and_runs_a_session_with_aof_and_with_rdb() {
    require!(Root, Redis, Plugins);
    let docs = Docs::load("redis", "redis");
    let role = &docs.role;
    for appendonly in [true, false] {
        let rig = Rig::new(if appendonly { "roles-rd-aof" } else { "roles-rd-rdb" }, "quiesce_redis", 64);
        let server = Redis::start(rig.m.mnt.path(), appendonly);
        let target = format!("tcp:127.0.0.1:{}", server.port);
        let unavoidable: Vec<&str> = REDIS_UNAVOIDABLE.iter().copied().chain((!appendonly).then_some("RedisPersistenceRdb")).collect();
        for (i, (d, hook)) in docs.both().into_iter().enumerate() {
            let source = format!("{} (appendonly {appendonly})", d.source);
            for rule in d.with_password() {
                redis_run(&server, &rule, &source);
            }
            let config = rig.config(&format!("rd{i}.toml"), &localize(hook, &source, role, &rig.plugin, &target, &rig.password_file));
            let r = rig.check(&config);
            assert_check_passes(&source, &r, &unavoidable);
            assert_finding(&source, &r, "passed", "RedisPauseAllowed");
            let run = rig.snapshot(&config);
            assert_session_app_consistent(&source, &run, "redis");
            let persisted = run.artifact_text("redis", "persistence");
            assert!(persisted.starts_with(if appendonly { "aof:" } else { "rdb: BGSAVE done" }), "{source}: {persisted}");
            redis_deluser(&server, role);
            if appendonly {
                // "+bgsave is needed only without AOF": with AOF, the rule without it is enough.
                for rule in d.with_password() {
                    let rule: Vec<&str> = rule.split_whitespace().filter(|t| *t != "+bgsave").collect();
                    redis_run(&server, &rule.join(" "), &source);
                }
                let source = format!("{source} without +bgsave");
                assert_check_passes(&source, &rig.check(&config), &unavoidable);
                assert_session_app_consistent(&source, &rig.snapshot(&config), "redis");
                redis_deluser(&server, role);
            }
        }
    }
}

/// What leaving the documented `+command` out of the ACL shows: the check
/// finding that names it, or `None` when only a session can tell.
fn redis_missing_finding(cmd: &str) -> Option<&'static str> {
    match cmd {
        "+ping" => Some("RedisLoginFailed"),
        "+info" | "+role" | "+time" | "+bgsave" => Some("RedisCommandDenied"),
        "+client|pause" => Some("RedisPauseDenied"),
        "+client|unpause" => None,
        other => panic!(
            "the docs allow {other}, which the plugin is not known to run: is it needed? (add it here with the finding that proves it)"
        ),
    }
}

/// Each `+command` of the documented rules (README and example) left out
/// in turn, on an RDB-only server (where pre runs BGSAVE): check names it —
/// except `CLIENT UNPAUSE`, which no check can probe without the `acl`
/// permission. RDB-only, nothing is paused, so nothing needs unpausing; on
/// an AOF server post's unpause is refused, and post fails and says so.
#[test]
fn redis_documented_acl_needs_every_command_it_allows() {
    require!(Root, Redis, Plugins);
    let docs = Docs::load("redis", "redis");
    let role = &docs.role;
    let rig = Rig::new("roles-rd-less", "quiesce_redis", 64);
    let server = Redis::start(rig.m.mnt.path(), false);
    let target = format!("tcp:127.0.0.1:{}", server.port);
    let hook = &docs.readme_hook;
    let config = rig.config("rd-less.toml", &localize(hook, &docs.readme.source, role, &rig.plugin, &target, &rig.password_file));
    for d in [&docs.readme, &docs.example] {
        let rule = d.with_password().into_iter().find(|s| s.to_ascii_uppercase().starts_with("ACL SETUSER"));
        let rule = rule.unwrap_or_else(|| panic!("{}: no ACL SETUSER rule", d.source));
        let commands: Vec<String> = acl_args(&rule).into_iter().filter(|t| t.starts_with('+')).collect();
        assert!(commands.len() > 1, "{}: {rule}", d.source);
        for left_out in &commands {
            let context = format!("{} without {left_out}", d.source);
            let less: Vec<&str> = rule.split_whitespace().filter(|t| t != left_out).collect();
            redis_run(&server, &less.join(" "), &d.source);
            let r = rig.check(&config);
            match redis_missing_finding(left_out) {
                Some(code) => {
                    assert_finding(&context, &r, "error", code);
                    assert_eq!(r["ok"], false, "{context}: {r:#}");
                }
                None => {
                    // Invisible to check, and unused RDB-only (pre pauses nothing).
                    assert_check_passes(&context, &r, &[REDIS_UNAVOIDABLE, &["RedisPersistenceRdb"]].concat());
                    assert_session_app_consistent(&context, &rig.snapshot(&config), "redis");
                    // With AOF the plugin pauses, and the session's post is refused.
                    let context = format!("{context}, appendonly");
                    let aof_parent = rig.m.mnt.path().join("aof");
                    std::fs::create_dir_all(&aof_parent).expect("aof server dir");
                    let aof = Redis::start(&aof_parent, true);
                    redis_run(&aof, &less.join(" "), &d.source);
                    let aof_target = format!("tcp:127.0.0.1:{}", aof.port);
                    let aof_config = rig.config(
                        "rd-less-aof.toml",
                        &localize(hook, &docs.readme.source, role, &rig.plugin, &aof_target, &rig.password_file),
                    );
                    let run = rig.snapshot(&aof_config);
                    assert_eq!(run.hook("redis", "post")["outcome"], "failed", "{context}: {}", run.report);
                    assert_ne!(run.code(), 0, "{context}: {}", run.report);
                    assert!(run.has_error("Post-ScriptExecutionFailed"), "{context}: {}", run.report);
                    let post = run.hook("redis", "post").to_string();
                    assert!(post.contains("CLIENT UNPAUSE") && post.contains("NOPERM"), "{context}: {post}");
                    // The pause the plugin could not end: ended by the admin.
                    aof.connect().cmd(&["CLIENT", "UNPAUSE"]).expect("CLIENT UNPAUSE as the default user");
                }
            }
            redis_deluser(&server, role);
        }
    }
}
