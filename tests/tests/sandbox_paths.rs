//! Paths a plugin, or a local user who can write somewhere near a grant,
//! could redirect (issue #9 items 1, 2, 6): file and socket grants pinned
//! and walked without symlinks, the compiled-plugin cache trusted only when
//! it is root's alone and only for entries it authenticated, artifacts
//! written only as new files beneath a checked state directory.
//!
//! The "other user" is the real `nobody` (via `runuser`), planting real
//! symlinks, FIFOs and device nodes; the plugin is the real `pathwalker`
//! component, which reads, connects and stores what its params say.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use quiesce::hooks::wasm::{CacheStatus, CallContext, CallOutcome, Events, Grants, InstanceConfig, WasmEngine};
use quiesce_tests::plugins::{install_plugin, Lockd};
use quiesce_tests::*;

const TIMEOUT: Duration = Duration::from_secs(10);
const SECRET: &str = "TOPSECRET-e3b0c44298fc1c149afb";

/// A scratch directory others may traverse (0711), with a root-only secret
/// in it and directories the test hands to `nobody`.
struct Env {
    s: Scratch,
    engine: WasmEngine,
}

/// A scratch directory `nobody` may traverse (0711), holding the root-only `secret`.
fn scratch(name: &str) -> Scratch {
    let s = Scratch::new(name);
    fs::set_permissions(&s.path, fs::Permissions::from_mode(0o711)).unwrap();
    write_mode(&s.join("secret"), SECRET, 0o600);
    s
}

/// A directory in `s` owned by `nobody` (mode 0755).
fn nobody_dir(s: &Scratch, name: &str) -> PathBuf {
    let d = s.join(name);
    fs::create_dir(&d).unwrap();
    sh(&format!("chown nobody:nogroup {}", d.display()));
    d
}

impl Env {
    fn new(name: &str) -> Env {
        let s = scratch(name);
        let engine = WasmEngine::new(&s.join("cache")).expect("engine");
        Env { s, engine }
    }

    fn nobody_dir(&self, name: &str) -> PathBuf {
        nobody_dir(&self.s, name)
    }

    /// Runs `pathwalker`'s pre with these grants and params: its one-line-per-try
    /// report and the call's events.
    async fn walk(&self, grants: &[String], params: &[(&str, String)]) -> (String, Events) {
        let plugin = self.engine.load(&install_plugin(&self.s, "pathwalker")).expect("load pathwalker");
        let mut cfg = InstanceConfig::new("pathwalker");
        cfg.grants = Grants::parse(grants).expect("grants");
        cfg.params = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        cfg.call_timeout = TIMEOUT;
        let mut inst = plugin.instantiate(cfg).await.expect("instantiate");
        let out = inst.pre(&CallContext { session_id: "t".into(), attempt: 1 }).await;
        let CallOutcome::Ok(lines) = out else { panic!("pathwalker did not finish: {out:?}") };
        (lines, inst.take_events())
    }
}

/// `runuser -u nobody -- sh -c CMD`: the other user acting.
fn as_nobody(cmd: &str) {
    sh(&format!("runuser -u nobody -- sh -c '{cmd}'"));
}

fn line<'a>(lines: &'a str, prefix: &str) -> &'a str {
    lines.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?} in:\n{lines}"))
}

fn d(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn symlinks_planted_in_a_granted_directory_by_its_owner_cannot_redirect_a_read() {
    require!(Root, Plugins);
    let env = Env::new("paths-symlink");
    let conf = env.nobody_dir("conf");
    let secret = env.s.join("secret");
    as_nobody(&format!(
        "echo password=ok > {c}/db.cnf; ln -s {s} {c}/redirect.cnf; ln -s /etc/shadow {c}/shadow; ln -s / {c}/root; ln -s {c}/db.cnf {c}/inside",
        c = d(&conf),
        s = d(&secret)
    ));
    let reads = [
        "db.cnf".to_string(),
        "redirect.cnf".into(),
        "shadow".into(),
        format!("root{}", d(&secret)),
        "root/etc/shadow".into(),
        "inside".into(),
    ]
    .map(|r| format!("{}/{r}", d(&conf)));
    let (lines, ev) = env.walk(&[format!("dir:{}", d(&conf))], &[("read", reads.join(";"))]).await;

    assert!(line(&lines, &format!("read {}:", reads[0])).contains("ok 12 bytes: password=ok"), "{lines}");
    for r in &reads[1..] {
        let l = line(&lines, &format!("read {r}:"));
        assert!(l.contains("Denied") && l.contains("symbolic link"), "{l}");
    }
    assert!(!lines.contains(SECRET) && !lines.contains("root:"), "nothing of the target reached the plugin:\n{lines}");
    assert_eq!(ev.denials.len(), reads.len() - 1, "each refusal is a grant denial: {:?}", ev.denials);

    // The same through a `file:` grant naming the link itself.
    let (lines, _) = env.walk(&[format!("file:{}", reads[1])], &[("read", reads[1].clone())]).await;
    assert!(line(&lines, "read").contains("Denied"), "{lines}");
    assert!(!lines.contains(SECRET));
}

#[tokio::test]
async fn a_grant_whose_path_goes_through_a_symlink_is_refused_naming_the_real_path() {
    require!(Root, Plugins);
    let env = Env::new("paths-pin-link");
    let conf = env.nobody_dir("conf");
    as_nobody(&format!("echo x > {}/db.cnf", d(&conf)));
    let alias = env.s.join("alias");
    std::os::unix::fs::symlink(&conf, &alias).unwrap();
    let (lines, ev) = env.walk(&[format!("dir:{}", d(&alias))], &[("read", format!("{}/db.cnf", d(&alias)))]).await;
    let l = line(&lines, "read");
    assert!(l.contains("Denied") && l.contains("symbolic link") && l.contains(&format!("it leads to {}: grant that", d(&conf))), "{l}");
    assert_eq!(ev.denials.len(), 1);
}

#[tokio::test]
async fn a_symlink_swapped_in_after_the_grant_was_pinned_is_not_followed() {
    require!(Root, Plugins);
    let env = Env::new("paths-swap");
    let conf = env.nobody_dir("conf");
    let sub = conf.join("sub");
    as_nobody(&format!("mkdir {s}; echo fine > {s}/db.cnf", s = d(&sub)));
    // Pinned with `sub` a real directory; then nobody swaps it for a link
    // to the directory holding the root-only secret, and the plugin reads.
    let plugin = env.engine.load(&install_plugin(&env.s, "pathwalker")).unwrap();
    let mut cfg = InstanceConfig::new("pathwalker");
    cfg.grants = Grants::parse([format!("dir:{}", d(&conf))]).unwrap();
    cfg.params = vec![("read".into(), format!("{s}/db.cnf;{s}/secret", s = d(&sub)))];
    let mut inst = plugin.instantiate(cfg).await.unwrap();
    as_nobody(&format!("mv {s} {c}/old; ln -s {e} {s}", s = d(&sub), c = d(&conf), e = d(&env.s.path)));
    let out = inst.pre(&CallContext { session_id: "t".into(), attempt: 1 }).await;
    let CallOutcome::Ok(lines) = out else { panic!("{out:?}") };
    assert!(lines.lines().all(|l| l.contains("Denied: ")), "{lines}");
    assert!(!lines.contains(SECRET), "{lines}");
}

#[tokio::test]
async fn device_fifo_directory_and_socket_under_a_grant_are_refused_without_blocking() {
    require!(Root, Plugins);
    let env = Env::new("paths-special");
    let conf = env.nobody_dir("conf");
    // A FIFO nobody made (opening it for reading would block until a writer
    // comes), a device node root made (as if by a package), a directory, a socket.
    as_nobody(&format!("mkfifo {c}/fifo; mkdir {c}/dir", c = d(&conf)));
    sh(&format!("mknod {}/zero c 1 5", d(&conf)));
    let _sock = std::os::unix::net::UnixListener::bind(conf.join("sock")).unwrap();
    let reads = ["fifo", "zero", "dir", "sock"].map(|r| format!("{}/{r}", d(&conf)));
    let (lines, ev) = env.walk(&[format!("dir:{}", d(&conf))], &[("read", reads.join(";"))]).await;
    for (r, what) in reads.iter().zip(["a FIFO", "a character device", "a directory", "a socket"]) {
        let l = line(&lines, &format!("read {r}:"));
        assert!(l.contains("Invalid") && l.contains(&format!("{what}, not a regular file")), "{l}");
    }
    assert!(ev.denials.is_empty(), "a wrong file type is not a grant denial: {:?}", ev.denials);
}

#[tokio::test]
async fn a_file_over_the_cap_is_refused_as_too_large() {
    require!(Root, Plugins);
    let env = Env::new("paths-big");
    let conf = env.nobody_dir("conf");
    // Sparse: 16 MiB + 1 byte, then a file at the cap that grows while read
    // is not in reach of a test without racing; the size check reads at most
    // cap + 1 bytes either way.
    as_nobody(&format!("truncate -s 16777217 {c}/big; echo small > {c}/small", c = d(&conf)));
    let reads = ["big", "small"].map(|r| format!("{}/{r}", d(&conf)));
    let (lines, _) = env.walk(&[format!("dir:{}", d(&conf))], &[("read", reads.join(";"))]).await;
    let l = line(&lines, &format!("read {}:", reads[0]));
    assert!(l.contains("TooLarge") && l.contains("16777216"), "{l}");
    assert!(line(&lines, &format!("read {}:", reads[1])).contains("ok 6 bytes"), "{lines}");
}

#[tokio::test]
async fn a_unix_grant_redirected_by_a_symlink_in_a_user_writable_directory_is_refused() {
    require!(Root, Plugins);
    let env = Env::new("paths-unix");
    // Root's own service, in root's directory: the prize.
    let root_dir = env.s.join("rootsvc");
    fs::create_dir(&root_dir).unwrap();
    let mut root_svc = Lockd::start(&format!("unix:{}", d(&root_dir.join("admin.sock"))));
    // The granted socket lives in a directory nobody owns (a database's run dir).
    let run = env.nobody_dir("run");
    let mut genuine = Lockd::start(&format!("unix:{}", d(&run.join("db.sock"))));
    let granted = format!("unix:{}", d(&run.join("db.sock")));
    let planted = format!("unix:{}", d(&run.join("planted.sock")));

    let (lines, _) = env.walk(std::slice::from_ref(&granted), &[("connect", granted.clone())]).await;
    assert_eq!(line(&lines, "connect"), format!("connect {granted}: ok"));
    genuine.wait_for(" open", TIMEOUT);

    as_nobody(&format!("ln -s {} {}", d(&root_dir.join("admin.sock")), d(&run.join("planted.sock"))));
    let (lines, ev) = env.walk(std::slice::from_ref(&planted), &[("connect", planted.clone())]).await;
    let l = line(&lines, "connect");
    assert!(l.contains("Denied") && l.contains("symbolic link"), "{l}");
    assert_eq!(ev.denials.len(), 1);
    // And through a symlinked directory in the grant itself.
    let alias = env.s.join("runlink");
    std::os::unix::fs::symlink(&run, &alias).unwrap();
    let via = format!("unix:{}", d(&alias.join("db.sock")));
    let (lines, _) = env.walk(std::slice::from_ref(&via), &[("connect", via.clone())]).await;
    assert!(line(&lines, "connect").contains("Denied"), "{lines}");
    // The test's own request is the only connection root's service ever saw.
    assert_eq!(root_svc.request("STATUS"), "UNLOCKED");
    root_svc.wait_for("closed", TIMEOUT);
    assert_eq!(root_svc.seen.iter().filter(|l| l.ends_with(" open")).count(), 1, "{:?}", root_svc.seen);
}

#[test]
fn check_warns_about_granted_paths_under_directories_that_are_not_roots_alone() {
    require!(Root, Plugins);
    let env = Env::new("paths-check");
    let conf = env.nobody_dir("conf");
    let root_conf = env.s.join("rootconf");
    fs::create_dir(&root_conf).unwrap();
    let g = Grants::parse([format!("dir:{}", d(&conf)), format!("file:{}/x.cnf", d(&root_conf)), "tcp:127.0.0.1:5432".into()]).unwrap();
    let w = g.untrusted_ancestors();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains(&format!("directory {} is owned by uid 65534", d(&conf))) && w[0].contains("chown root"), "{w:?}");
    fs::set_permissions(&root_conf, fs::Permissions::from_mode(0o775)).unwrap();
    let w = g.untrusted_ancestors();
    assert!(w.iter().any(|w| w.contains("writable by group or others (mode 0775)")), "{w:?}");
}

#[test]
fn quiesce_check_shows_the_grant_warning() {
    require!(Root, Plugins);
    let f = Session::new("paths-check-cli");
    let conf = nobody_dir(&f.s, "conf");
    let config = f.config("", &[format!("dir:{}", d(&conf))]);
    let r = check_json(&f.s, &f.s.join("cache"), &config, f.mnt.path());
    let w = &r["hooks"][0]["plugin"]["grant_warnings"][0];
    assert!(w.as_str().is_some_and(|w| w.contains("owned by uid 65534")), "{r}");
    assert_eq!(r["ok"], true, "a warning, not a problem: {r}");
}

// ---- the compiled-plugin cache ----

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_group_writable_cache_directory_is_bypassed_never_chmodded_and_its_entries_never_loaded() {
    require!(Root, Plugins);
    let env = Env::new("paths-cache-open");
    let path = install_plugin(&env.s, "noop");
    assert_eq!(*env.engine.load(&path).unwrap().cache_status(), CacheStatus::Miss);
    let cache = env.s.join("cache");
    let entry = entries(&cache).pop().expect("entry written");
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o770)).unwrap();
    let before = fs::metadata(&entry).unwrap();

    let engine = WasmEngine::new(&cache).unwrap();
    let p = engine.load(&path).unwrap();
    assert!(
        matches!(p.cache_status(), CacheStatus::Disabled(why) if why.contains("writable by group or others") && why.contains("chmod go-w")),
        "{:?}",
        p.cache_status()
    );
    assert!(p.describe().await.is_ok(), "compiled in memory, works");
    assert_eq!(fs::metadata(&cache).unwrap().mode() & 0o777, 0o770, "the directory was not chmod'ed");
    let after = fs::metadata(&entry).unwrap();
    assert_eq!((before.ino(), before.mtime(), before.size()), (after.ino(), after.mtime(), after.size()), "the entry was left alone");
    assert!(!engine.is_cached(&fs::read(&path).unwrap()), "nothing in it counts as cached");

    // A cache directory below a directory another user owns: the same.
    let theirs = env.nobody_dir("theirs");
    let engine = WasmEngine::new(&theirs.join("cache")).unwrap();
    let p = engine.load(&path).unwrap();
    assert!(matches!(p.cache_status(), CacheStatus::Disabled(why) if why.contains("owned by uid 65534")), "{:?}", p.cache_status());
}

#[tokio::test]
async fn a_planted_or_swapped_cache_entry_is_rebuilt_never_run() {
    require!(Root, Plugins);
    let env = Env::new("paths-cache-forge");
    let noop = install_plugin(&env.s, "noop");
    let other = install_plugin(&env.s, "misbehave");
    env.engine.load(&other).unwrap();
    let other_entry = entries(&env.s.join("cache")).pop().unwrap();
    env.engine.load(&noop).unwrap();
    let noop_entry = entries(&env.s.join("cache")).into_iter().find(|e| *e != other_entry).unwrap();
    let genuine = fs::read(&other_entry).unwrap();
    // What another process finds on disk: a fresh engine per load (one
    // engine keeps a plugin it loaded in memory and never rereads its entry).
    let load_fresh = |path: &std::path::Path| WasmEngine::new(&env.s.join("cache")).unwrap().load(path).unwrap();

    // Swapped: another plugin's genuine entry under noop's name. If it were
    // run, noop would describe itself as misbehave.
    // Root's and 0600 like a genuine entry: only the MAC can tell.
    let forge = |bytes: &[u8]| {
        let _ = fs::remove_file(&noop_entry);
        write_bytes_0600(&noop_entry, bytes);
    };
    let describes_as_noop = |status: &CacheStatus, why: &str| {
        assert!(matches!(status, CacheStatus::Rebuilt(r) if r.contains(why)), "{status:?}");
    };
    forge(&genuine);
    let p = load_fresh(&noop);
    describes_as_noop(p.cache_status(), "not authentic");
    assert_eq!(p.describe().await.unwrap().name, "noop");

    // Planted: the same native code with a trailer (magic, tag, length)
    // whose tag is a valid sha256 of it (what a checksum-only cache accepted).
    let (artifact, trailer) = genuine.split_at(genuine.len() - 56);
    fs::write(env.s.join("artifact"), artifact).unwrap();
    let sum = sh(&format!("sha256sum {}", d(&env.s.join("artifact"))));
    let sum: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&sum[2 * i..2 * i + 2], 16).unwrap()).collect();
    let mut planted = artifact.to_vec();
    planted.extend_from_slice(&trailer[..16]);
    planted.extend_from_slice(&sum);
    planted.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
    forge(&planted);
    let p = load_fresh(&noop);
    describes_as_noop(p.cache_status(), "not authentic");
    assert_eq!(p.describe().await.unwrap().name, "noop");

    // A symlink at the entry's name to the other plugin's entry.
    let _ = fs::remove_file(&noop_entry);
    std::os::unix::fs::symlink(&other_entry, &noop_entry).unwrap();
    let p = load_fresh(&noop);
    describes_as_noop(p.cache_status(), "symbolic link");
    assert_eq!(p.describe().await.unwrap().name, "noop");
    assert_eq!(fs::read(&other_entry).unwrap(), genuine, "the link's target was not touched");

    // And what was rebuilt is authentic.
    assert_eq!(*load_fresh(&noop).cache_status(), CacheStatus::Hit);
    let key = env.s.join("cache/cache.key");
    assert_eq!((fs::metadata(&key).unwrap().mode() & 0o777, fs::metadata(&key).unwrap().size()), (0o600, 32));
}

fn write_bytes_0600(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[tokio::test]
async fn a_genuine_cache_entry_that_is_not_roots_alone_is_rebuilt_never_mapped() {
    require!(Root, Plugins);
    let env = Env::new("paths-cache-mode");
    let noop = install_plugin(&env.s, "noop");
    env.engine.load(&noop).unwrap();
    let entry = entries(&env.s.join("cache")).pop().unwrap();
    let load_fresh = || WasmEngine::new(&env.s.join("cache")).unwrap().load(&noop).unwrap();

    // Its MAC still verifies, but someone could have written it while it
    // was group-writable: it is not mapped, let alone run.
    fs::set_permissions(&entry, fs::Permissions::from_mode(0o660)).unwrap();
    let p = load_fresh();
    assert!(matches!(p.cache_status(), CacheStatus::Rebuilt(r) if r.contains("not this host's 0600 file")), "{:?}", p.cache_status());
    assert_eq!(p.describe().await.unwrap().name, "noop");
    assert_eq!(fs::metadata(&entry).unwrap().mode() & 0o777, 0o600, "rewritten root-only");
    assert_eq!(*load_fresh().cache_status(), CacheStatus::Hit);

    // Another owner: the same.
    sh(&format!("chown nobody {}", d(&entry)));
    let p = load_fresh();
    assert!(matches!(p.cache_status(), CacheStatus::Rebuilt(r) if r.contains("owned by uid 65534")), "{:?}", p.cache_status());
    assert_eq!(fs::metadata(&entry).unwrap().uid(), 0);
    assert_eq!(*load_fresh().cache_status(), CacheStatus::Hit);
}

#[tokio::test]
async fn a_cache_on_a_noexec_mount_still_loads_verified_entries_by_copying_them() {
    require!(Root, Plugins);
    let env = Env::new("paths-cache-noexec");
    let noop = install_plugin(&env.s, "noop");
    let m = LoopMount::new(&env.s.path, "noexec", Fs::Ext4);
    sh(&format!("mount -o remount,noexec {}", d(m.path())));
    let cache = m.path().join("cache");
    assert_eq!(*WasmEngine::new(&cache).unwrap().load(&noop).unwrap().cache_status(), CacheStatus::Miss);
    // wasmtime cannot map an entry there executable; the verified bytes are
    // copied instead, and the entry is used, not rebuilt.
    let p = WasmEngine::new(&cache).unwrap().load(&noop).unwrap();
    assert_eq!(*p.cache_status(), CacheStatus::Hit);
    let mut inst = p.instantiate(InstanceConfig::new("noop")).await.unwrap();
    assert!(inst.pre(&CallContext { session_id: "s".into(), attempt: 1 }).await.is_success());
}

// ---- artifacts ----

#[tokio::test]
async fn an_oversize_artifact_gets_too_large_and_the_plugin_goes_on() {
    require!(Root, Plugins);
    let env = Env::new("paths-artifact-big");
    let (lines, _) = env.walk(&[], &[("store", format!("big:{};huge:{};label:12", (16 << 20) + 1, 40 << 20))]).await;
    assert!(line(&lines, "store big:").contains("TooLarge"), "{lines}");
    assert!(line(&lines, "store huge:").contains("TooLarge"), "{lines}");
    assert_eq!(line(&lines, "store label:"), "store label: ok");
}

struct Session {
    mnt: LoopMount,
    s: Scratch,
}

impl Session {
    fn new(name: &str) -> Session {
        let s = scratch(name);
        let mnt = LoopMount::new(&s.path, "mnt", Fs::Ext4);
        Session { mnt, s }
    }

    /// A config with one pathwalker hook named `pw`.
    fn config(&self, params: &str, grants: &[String]) -> PathBuf {
        let plugin = install_plugin(&self.s, "pathwalker");
        let grants: Vec<String> = grants.iter().map(|g| format!("{g:?}")).collect();
        self.s.config(
            "quiesce.toml",
            &format!(
                "[[hook]]\nname = \"pw\"\nplugin = \"{}\"\nparams = {{ {params} }}\ngrants = [{}]\n",
                plugin.display(),
                grants.join(", ")
            ),
        )
    }

    /// A `quiesce snapshot --json` with that hook.
    fn run(&self, params: &str, grants: &[String], snapshot_cmd: &str) -> Run {
        let config = self.config(params, grants);
        run_json(quiesce_snapshot(&self.s, &config, self.mnt.path(), snapshot_cmd))
    }
}

/// The report's error about storing artifacts; panics with the report if there is none.
fn artifact_error(run: &Run) -> String {
    let errors = run.report["errors"].as_array().map(Vec::as_slice).unwrap_or_default();
    let msg = errors.iter().filter_map(|e| e["message"].as_str()).find(|m| m.contains("artifacts"));
    msg.unwrap_or_else(|| panic!("no artifact error: {}", run.report)).to_string()
}

#[test]
fn a_session_reports_the_refused_read_and_nothing_of_the_secret() {
    require!(Root, Plugins);
    let f = Session::new("paths-session-secret");
    let conf = nobody_dir(&f.s, "conf");
    as_nobody(&format!("ln -s {} {}/db.cnf", d(&f.s.join("secret")), d(&conf)));
    let run = f.run(&format!("read = \"{}/db.cnf\"", d(&conf)), &[format!("dir:{}", d(&conf))], "true");
    assert!(run.has_error("GrantDenied"), "{}", run.report);
    assert!(!run.report.to_string().contains(SECRET), "{}", run.report);
    assert!(!fs::read_to_string(f.s.join("quiesce.log")).unwrap_or_default().contains(SECRET));
}

#[test]
fn an_artifact_name_planted_as_a_symlink_is_refused_and_its_target_untouched() {
    require!(Root, Plugins);
    let f = Session::new("paths-artifact-link");
    let victim = f.s.join("victim");
    write_mode(&victim, "precious\n", 0o600);
    // The snapshot command runs between pre (which hands over the artifact)
    // and the store after post: it plants a link where the artifact will go.
    let dir = format!("{}/sessions/$QUIESCE_SESSION_ID/pw", d(&f.s.join("state")));
    let plant = format!("mkdir -p {dir} && chmod 700 {dir} && ln -s {} {dir}/label", d(&victim));
    let run = f.run("store = \"label:12\"", &[], &plant);
    let msg = artifact_error(&run);
    assert!(msg.contains("exists already"), "{msg}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n", "the link's target was not written");
    assert!(run.report["artifacts"].as_array().is_none_or(|a| a.is_empty()), "{}", run.report);

    // The hook's directory itself planted as a link to another directory.
    let elsewhere = f.s.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let sessions = format!("{}/sessions/$QUIESCE_SESSION_ID", d(&f.s.join("state")));
    let run = f.run("store = \"label:12\"", &[], &format!("mkdir -p {sessions} && ln -s {} {sessions}/pw", d(&elsewhere)));
    let msg = artifact_error(&run);
    assert!(msg.contains("is a symbolic link"), "{msg}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing was written through the link");
}

#[test]
fn a_state_directory_owned_by_another_user_is_refused_with_the_fix() {
    require!(Root, Plugins);
    let f = Session::new("paths-state-owner");
    let state = nobody_dir(&f.s, "state");
    let run = f.run("store = \"label:12\"", &[], "true");
    let msg = artifact_error(&run);
    assert!(msg.contains(&format!("directory {} is owned by uid 65534", d(&state))) && msg.contains("chown root"), "{msg}");
    assert_eq!(fs::read_dir(&state).unwrap().count(), 0, "nothing was written into it");
    assert_eq!(run.report["snapshot_taken"], true, "the snapshot itself is not affected");
}

#[test]
fn artifacts_land_in_a_fresh_root_only_directory() {
    require!(Root, Plugins);
    let f = Session::new("paths-artifact-ok");
    let run = f.run("store = \"label:12\"", &[], "true");
    assert_eq!(run.code(), 0, "{}", run.report);
    let path = PathBuf::from(run.report["artifacts"][0]["path"].as_str().unwrap());
    assert_eq!(fs::read(&path).unwrap(), b"xxxxxxxxxxxx");
    let m = fs::symlink_metadata(&path).unwrap();
    assert!(m.file_type().is_file() && m.mode() & 0o777 == 0o600 && m.uid() == 0);
    for dir in path.ancestors().skip(1).take(3) {
        let m = fs::symlink_metadata(dir).unwrap();
        assert!(m.is_dir() && m.mode() & 0o777 == 0o700 && m.uid() == 0, "{}", dir.display());
    }
}
