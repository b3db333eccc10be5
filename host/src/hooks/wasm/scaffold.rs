//! `quiesce plugin new NAME`: a plugin crate that builds for
//! `wasm32-wasip2` and passes `plugin inspect` and `check` as generated.
//!
//! The crate must build wherever the author is — outside this tree, offline
//! — so by default it carries its own copy of the SDK (`sdk/`, embedded in
//! this binary: the SDK and WIT version this quiesce runs, byte for byte)
//! and depends on it by a path inside the crate. `--sdk PATH` depends on a
//! shared SDK checkout instead. Nothing is overwritten: the crate's
//! directory must not exist yet.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::WitVersion;

/// The SDK this binary was built with, written into each new crate.
const SDK_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../../plugins/sdk/Cargo.toml")),
    ("src/lib.rs", include_str!("../../../../plugins/sdk/src/lib.rs")),
    ("wit/plugin.wit", include_str!("../../../../plugins/sdk/wit/plugin.wit")),
];

/// Where the new crate gets the SDK from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SdkSource {
    /// A copy in the crate's `sdk/` directory (the default: builds anywhere).
    Embedded,
    /// An SDK checkout at this (absolute) path.
    Path(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("plugin name {0:?}: use 1-64 of a-z, 0-9, '-' and '_', starting with a letter")]
    Name(String),
    #[error("{}: already exists; choose another name or --dir", .0.display())]
    Exists(PathBuf),
    #[error("--sdk {}: no quiesce-plugin-sdk there (expected Cargo.toml naming quiesce-plugin-sdk)", .0.display())]
    Sdk(PathBuf),
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Creates the crate `dir/NAME` and returns its path.
pub fn new_plugin(name: &str, dir: &Path, sdk: &SdkSource) -> Result<PathBuf, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::Name(name.to_owned()));
    }
    let root = dir.join(name);
    if root.symlink_metadata().is_ok() {
        return Err(ScaffoldError::Exists(root));
    }
    let dep = match sdk {
        SdkSource::Embedded => "{ path = \"sdk\" }".to_owned(),
        SdkSource::Path(p) => {
            let manifest = fs::read_to_string(p.join("Cargo.toml")).unwrap_or_default();
            if !manifest.contains("name = \"quiesce-plugin-sdk\"") {
                return Err(ScaffoldError::Sdk(p.clone()));
            }
            format!("{{ path = {:?} }}", p.display().to_string())
        }
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScaffoldError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    // create_dir, not create_dir_all: the crate's own directory must be new.
    fs::create_dir(&root).map_err(io(&root))?;
    let mut files: Vec<(String, String)> = vec![
        ("Cargo.toml".into(), cargo_toml(name, &dep)),
        (".cargo/config.toml".into(), "# Plain `cargo build` builds the component.\n[build]\ntarget = \"wasm32-wasip2\"\n".into()),
        (".gitignore".into(), "/target\n".into()),
        ("src/lib.rs".into(), lib_rs(name)),
        ("README.md".into(), readme(name)),
    ];
    if *sdk == SdkSource::Embedded {
        files.extend(SDK_FILES.iter().map(|(p, text)| (format!("sdk/{p}"), (*text).to_owned())));
    }
    for (rel, text) in files {
        let path = root.join(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut f = OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).open(&path).map_err(io(&path))?;
        f.write_all(text.as_bytes()).map_err(io(&path))?;
    }
    Ok(root)
}

fn cargo_toml(name: &str, dep: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false
description = "quiesce plugin: {name}"

[lib]
crate-type = ["cdylib"]

[dependencies]
# quiesce:plugin@{wit}; `sdk/` is the SDK this quiesce was built with.
quiesce-plugin-sdk = {dep}

# Small components load faster the first time (the host compiles them once).
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = "debuginfo"

# A workspace of its own, wherever the crate lies.
[workspace]
"#,
        wit = WitVersion::NEWEST
    )
}

fn lib_rs(name: &str) -> String {
    let ty: String = name
        .split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    format!(
        r#"//! quiesce plugin `{name}`: quiesces (say what) around a disk snapshot.
//!
//! `pre` runs before the file systems are frozen, `post` after they are
//! thawed, in one instance (what `pre` keeps in `self` is there in `post`).
//! `check` runs on its own (`quiesce check`) and must change nothing.
//! See the SDK's documentation: `cargo doc --open -p quiesce-plugin-sdk`.

use quiesce_plugin_sdk::{{Context, Finding, HookResult, Info, Plugin, Snapshot}};

#[derive(Default)]
struct {ty};

impl Plugin for {ty} {{
    fn describe() -> Info {{
        Info::new("{name}", env!("CARGO_PKG_VERSION")).quiesces("nothing yet")
        // .grant("tcp:127.0.0.1:7000")  // what it connects to; the admin grants it
        // .param("target", "where the application listens", Some("tcp:127.0.0.1:7000"))
    }}

    /// Verify, without quiescing anything, that pre and post will work:
    /// connect, log in, check privileges. One finding per thing verified.
    fn check(&mut self, _ctx: &Context) -> Vec<Finding> {{
        vec![Finding::info("NothingCheckedYet", "this plugin checks nothing yet: write Plugin::check in src/lib.rs")]
    }}

    fn pre(&mut self, _ctx: &Context) -> HookResult {{
        HookResult::ok("nothing to quiesce yet")
    }}

    fn post(&mut self, _ctx: &Context, snapshot: &Snapshot) -> HookResult {{
        // If what pre did ended before the snapshot was taken (a lock that
        // expired), return HookResult::not_held("why") — the label comes down.
        HookResult::ok(format!("nothing to release (snapshot taken: {{}}, {{}})", snapshot.taken, snapshot.label))
    }}
}}

quiesce_plugin_sdk::register!({ty});
"#
    )
}

fn readme(name: &str) -> String {
    format!(
        r#"# {name}: a quiesce plugin

```sh
rustup target add wasm32-wasip2
cargo build --release            # .cargo/config.toml selects wasm32-wasip2
quiesce plugin inspect target/wasm32-wasip2/release/{file}.wasm
```

Install it root-owned, mode 0644, in a directory only root can write
(e.g. `/etc/quiesce/plugins/`), add a hook to `/etc/quiesce/quiesce.toml`:

```toml
[[hook]]
name = "{name}"
plugin = "/etc/quiesce/plugins/{file}.wasm"
params = {{}}
grants = []        # e.g. "tcp:127.0.0.1:7000", "file:/etc/{name}/password"
```

and run `quiesce check`: it loads the plugin and runs its `check` with
those grants and params, changing nothing.
"#,
        file = name.replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_crate_and_file_names() {
        assert!(valid_name("mydb") && valid_name("my-db_2"));
        for bad in ["", "MyDb", "1db", "../x", "a/b", "-x", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_embedded_sdk_speaks_the_newest_wit() {
        let wit = SDK_FILES.iter().find(|(p, _)| *p == "wit/plugin.wit").map(|(_, t)| *t).unwrap_or_default();
        assert!(wit.contains(&format!("package quiesce:plugin@{};", WitVersion::NEWEST)));
        assert!(lib_rs("my-db").contains("struct MyDb;"));
    }
}
