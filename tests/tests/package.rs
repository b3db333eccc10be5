//! The Debian package, for real (issue 12): `scripts/package` builds it,
//! `dpkg -i` installs it on this machine, the installed binary checks an
//! installed example config, the man pages and completions are there and
//! valid, and `dpkg --purge` leaves nothing behind — every path the package
//! installed and every directory quiesce created. A guard purges the package
//! and puts back what the test moved aside, also when an assertion fails.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quiesce_tests::*;

/// Directories quiesce creates at run time and `dpkg --purge` removes.
const CREATED: [&str; 3] = ["/var/lib/quiesce", "/var/cache/quiesce", "/var/log/quiesce"];

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "quiesce"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
        .unwrap_or(false)
}

/// Purges the package and puts back the directories moved aside.
struct Machine {
    moved: Vec<(PathBuf, PathBuf)>,
}

impl Machine {
    /// Refuses to touch a machine where quiesce is installed or configured
    /// for real; moves aside what earlier runs of quiesce left in the
    /// directories the purge removes, so that the purge can be checked.
    fn take() -> Machine {
        assert!(!installed(), "the quiesce package is installed on this machine: this test would purge it");
        assert!(!Path::new("/etc/quiesce").exists(), "/etc/quiesce exists: this test's purge would remove an admin's config");
        for bin in ["/usr/bin/quiesce", "/usr/bin/quiesce-client"] {
            assert!(!Path::new(bin).exists(), "{bin} exists outside the package: the install would replace it");
        }
        let mut moved = Vec::new();
        for dir in CREATED {
            if Path::new(dir).exists() {
                let aside = PathBuf::from(format!("{dir}.package-test-{}", std::process::id()));
                fs::rename(dir, &aside).unwrap_or_else(|e| panic!("move {dir} aside: {e}"));
                moved.push((PathBuf::from(dir), aside));
            }
        }
        Machine { moved }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if installed() {
            let _ = Command::new("dpkg").args(["--purge", "quiesce"]).status();
        }
        for (dir, aside) in &self.moved {
            let _ = fs::remove_dir_all(dir);
            if let Err(e) = fs::rename(aside, dir) {
                eprintln!("cannot put {} back at {}: {e}", aside.display(), dir.display());
            }
        }
    }
}

#[test]
fn package_installs_checks_an_example_and_purges_to_nothing() {
    require!(Root);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf();
    let s = MountedScratch::new("package");
    let machine = Machine::take();

    // The debug binary cargo test already built: this checks the packaging
    // (contents, modes, install, purge), not the optimiser, and a cold release
    // build of wasmtime would add ~10 minutes to every test run.
    run(Command::new(repo.join("scripts/package")).env("QUIESCE_PACKAGE_PROFILE", "dev").current_dir(&repo));
    let debian = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("target")).join("debian");
    let deb = fs::read_dir(&debian)
        .expect("target/debian")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("quiesce_") && n.to_string_lossy().ends_with(".deb")))
        .expect("scripts/package left no target/debian/quiesce_*.deb");
    // Debian's own checker: no error and no warning (policy: stripped
    // binaries, a changelog, a copyright notice, no bare systemctl in the
    // maintainer scripts, a maintainer address that can exist).
    let lint = run(Command::new("lintian").args(["--fail-on", "error,warning", "--tag-display-limit", "0"]).arg(&deb));
    assert!(stdout(&lint).trim().is_empty(), "lintian: {}", stdout(&lint));

    run(Command::new("dpkg").arg("-i").arg(&deb));
    let listed: Vec<PathBuf> = stdout(&run(Command::new("dpkg").args(["-L", "quiesce"]))).lines().map(PathBuf::from).collect();
    let has = |p: &str| listed.iter().any(|l| l == Path::new(p));
    for p in [
        "/usr/bin/quiesce",
        "/usr/bin/quiesce-client",
        "/usr/lib/quiesce/plugins/postgres.wasm",
        "/usr/lib/quiesce/plugins/mariadb.wasm",
        "/usr/lib/quiesce/plugins/redis.wasm",
        "/usr/lib/quiesce/plugins/noop.wasm",
        "/usr/lib/quiesce/plugins/lockd.wasm",
        "/usr/share/doc/quiesce/examples/postgres.toml",
        "/usr/share/doc/quiesce/examples/mariadb.toml",
        "/usr/share/doc/quiesce/examples/redis.toml",
        "/usr/share/doc/quiesce/examples/VMSnapshotScriptPluginConfig.json",
        "/usr/share/doc/quiesce/copyright",
        "/usr/share/doc/quiesce/changelog.gz",
        "/usr/share/man/man1/quiesce.1.gz",
        "/usr/share/man/man1/quiesce-check.1.gz",
        "/usr/share/man/man1/quiesce-snapshot.1.gz",
        "/usr/share/man/man1/quiesce-client.1.gz",
        "/usr/share/man/man1/quiesce-client-fsfreeze-hook.1.gz",
        "/usr/share/bash-completion/completions/quiesce-client",
        "/usr/share/bash-completion/completions/quiesce",
        "/usr/share/zsh/vendor-completions/_quiesce",
        "/usr/share/fish/vendor_completions.d/quiesce.fish",
        "/usr/lib/systemd/system/quiesce.socket",
        "/usr/lib/systemd/system/quiesce.service",
        "/usr/lib/systemd/system/quiesce-snapshot.service",
        "/usr/lib/systemd/system/quiesce-snapshot.timer",
    ] {
        assert!(has(p) && Path::new(p).exists(), "{p} not installed; dpkg -L:\n{listed:?}");
    }
    // No test plugin ships.
    assert!(!listed.iter().any(|p| ["hostile", "misbehave", "pathwalker"].iter().any(|t| p.to_string_lossy().contains(t))), "{listed:?}");
    // Integrations are shipped as the tree has them, executables executable.
    for f in listed.iter().filter(|p| p.starts_with("/usr/share/quiesce/integrations") && p.is_file()) {
        let rel = f.strip_prefix("/usr/share/quiesce/integrations").unwrap();
        let src = repo.join("integrations").join(rel);
        assert_eq!(fs::read(f).ok(), fs::read(&src).ok(), "{} differs from {}", f.display(), src.display());
        let exec = |p: &Path| fs::metadata(p).map(|m| m.mode() & 0o111 != 0).unwrap_or(false);
        assert_eq!(exec(f), exec(&src), "{} executable bit", f.display());
    }
    let etc = fs::metadata("/etc/quiesce").expect("/etc/quiesce created");
    assert!(etc.is_dir() && etc.uid() == 0 && etc.mode() & 0o777 == 0o700, "/etc/quiesce mode {:o}", etc.mode());

    // The installed binary, its defaults untouched (cache, log: /var/...).
    let quiesce = || {
        let mut c = Command::new("/usr/bin/quiesce");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("QUIESCE_") {
                c.env_remove(k);
            }
        }
        c
    };
    let help = stdout(&run(quiesce().arg("--help")));
    assert!(help.contains("snapshot") && help.contains("check"), "{help}");
    assert!(!help.contains("generate-docs"), "the packaging subcommand is hidden: {help}");
    let client_help = stdout(&run(Command::new("/usr/bin/quiesce-client").arg("--help")));
    for cmd in ["begin", "end", "fsfreeze-hook"] {
        assert!(client_help.contains(cmd), "quiesce-client --help lacks {cmd}: {client_help}");
    }
    // As an admin would: the example copied to the default config path, root's, 0600.
    let config = "/etc/quiesce/quiesce.toml";
    run(Command::new("install").args(["-m", "0600", "/usr/share/doc/quiesce/examples/postgres.toml", config]));
    let out = quiesce().args(["check", "--json", "--mount"]).arg(s.mnt.path()).output().expect("quiesce check");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json: {e}\n{}\n{}", stdout(&out), String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["config"], config, "the default config path: {report:#}");
    let hook = &report["hooks"][0];
    assert_eq!(hook["name"], "postgres", "{report:#}");
    assert_eq!(hook["plugin"]["status"], "ok", "the installed plugin loads: {report:#}");
    assert_eq!(hook["plugin"]["not_granted"], serde_json::json!([]), "the example grants what the plugin needs: {report:#}");
    assert_eq!(report["freeze"]["targets"][0]["path"], s.mnt.path().display().to_string(), "{report:#}");
    let text = stdout(&quiesce().args(["check", "--mount"]).arg(s.mnt.path()).output().expect("quiesce check"));
    assert!(text.contains("plugin /usr/lib/quiesce/plugins/postgres.wasm: ok"), "{text}");
    assert!(Path::new("/var/cache/quiesce/plugins").is_dir(), "check ran with the installed defaults (plugin cache)");

    // Man pages: valid roff that man renders; completions that the shells read.
    let man = Command::new("man").env("MANWIDTH", "80").args(["-P", "cat", "-l", "/usr/share/man/man1/quiesce-check.1.gz"]).output();
    match man {
        Ok(out) => {
            let page = stdout(&out);
            assert!(out.status.success() && page.contains("quiesce-check") && page.contains("--config"), "man -l:\n{page}");
        }
        Err(e) => eprintln!("man not available ({e}); checked the page header only"),
    }
    let roff = stdout(&run(Command::new("zcat").arg("/usr/share/man/man1/quiesce.1.gz")));
    assert!(roff.starts_with(".ie") || roff.contains("\n.TH quiesce 1"), "{roff}");
    run(Command::new("bash").args(["-n", "/usr/share/bash-completion/completions/quiesce"]));
    let bash = fs::read_to_string("/usr/share/bash-completion/completions/quiesce").unwrap();
    assert!(bash.contains("complete -F") && bash.contains("snapshot"), "{bash}");
    assert!(fs::read_to_string("/usr/share/zsh/vendor-completions/_quiesce").unwrap().starts_with("#compdef quiesce"));
    assert!(fs::read_to_string("/usr/share/fish/vendor_completions.d/quiesce.fish").unwrap().contains("complete -c quiesce"));

    // The units as installed (systemd need not run for `verify`).
    if let Ok(out) = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(
            ["quiesce.socket", "quiesce.service", "quiesce-snapshot.service", "quiesce-snapshot.timer"]
                .map(|u| format!("/usr/lib/systemd/system/{u}")),
        )
        .output()
    {
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "systemd-analyze verify:\n{said}");
    }

    run(Command::new("dpkg").args(["--purge", "quiesce"]));
    assert!(!installed());
    let left: Vec<&PathBuf> =
        listed.iter().filter(|p| p.exists() && !(p.is_dir() && fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false))).collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    for dir in ["/etc/quiesce", "/usr/lib/quiesce", "/usr/share/doc/quiesce", "/usr/share/quiesce"].into_iter().chain(CREATED) {
        assert!(!Path::new(dir).exists(), "{dir} left after purge");
    }
    drop(machine);
}
