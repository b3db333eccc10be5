//! The on-disk cache of compiled plugins.
//!
//! Compiling a component takes 100+ ms; loading the compiled artifact takes
//! about one. Loading an artifact is `unsafe` in wasmtime's sense: it is
//! native code, mapped and run as is. So an entry is only ever used if
//!
//! - it sits in a directory owned by the host's user with mode 0700
//!   (nobody else can plant or swap one),
//! - its name is the key: sha256 of the engine's compatibility hash
//!   (wasmtime version, target, compiler settings) and the plugin's bytes,
//! - its header's sha256 of the artifact matches the artifact, and its
//!   length matches the file's.
//!
//! Anything else — truncated, bit-flipped, foreign — is logged, removed and
//! rebuilt; it is never deserialized. Entries are written to a temporary
//! file and renamed into place, so a crash leaves no half-written entry.

use std::fs::{self, DirBuilder, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// First bytes of every entry; bump the version when the layout changes.
const MAGIC: &[u8; 16] = b"quiesce-cwasm-1\n";
const HEADER_LEN: usize = MAGIC.len() + 32 + 8;

/// How a component was obtained.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum CacheStatus {
    /// Loaded from a verified cache entry.
    Hit,
    /// Compiled; the entry was written for next time.
    Miss,
    /// An entry existed but failed verification: removed, recompiled, rewritten.
    Rebuilt(String),
    /// Compiled without the cache (unusable directory, write failure).
    Disabled(String),
}

/// Sha256 as a `Hasher`, so `precompile_compatibility_hash` can feed it.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug)]
pub(crate) struct Cache {
    dir: PathBuf,
    /// Why the directory cannot be used, if it cannot.
    unusable: Option<String>,
}

impl Cache {
    /// Creates the directory (0700) if needed; a directory that is not ours
    /// or is open to others disables the cache (with a warning) rather than
    /// failing the session.
    pub fn open(dir: &Path) -> Cache {
        let unusable = prepare_dir(dir).err();
        if let Some(why) = &unusable {
            tracing::warn!("plugin cache disabled: {why}; plugins are compiled on every load");
        }
        Cache { dir: dir.to_path_buf(), unusable }
    }

    /// No cache at all: every load compiles in memory, nothing is written
    /// (`inspect` by a user who is not root).
    pub fn disabled(why: &str) -> Cache {
        Cache { dir: PathBuf::new(), unusable: Some(why.to_owned()) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key(engine: &Engine, wasm: &[u8]) -> String {
        let mut h = ShaHasher(Sha256::new());
        MAGIC.hash(&mut h);
        engine.precompile_compatibility_hash().hash(&mut h);
        h.0.update((wasm.len() as u64).to_le_bytes());
        h.0.update(wasm);
        hex(&h.0.finalize())
    }

    pub fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    /// Whether a verified entry exists for `wasm` (reads it; deserializes nothing).
    pub fn contains(&self, engine: &Engine, wasm: &[u8]) -> bool {
        self.unusable.is_none() && matches!(read_entry(&self.entry_path(&Cache::key(engine, wasm))), Ok(Some(_)))
    }

    /// The compiled component for `wasm`, from the cache or freshly compiled.
    pub fn load_or_compile(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<(Component, CacheStatus)> {
        if let Some(why) = &self.unusable {
            return Ok((Component::new(engine, wasm)?, CacheStatus::Disabled(why.clone())));
        }
        let path = self.entry_path(&Cache::key(engine, wasm));
        let mut rebuilt = None;
        match read_entry(&path) {
            Ok(Some(artifact)) => {
                // SAFETY: the artifact was written by this host (root-only
                // directory, name = hash of engine + input) and its checksum
                // was verified just now.
                match unsafe { Component::deserialize(engine, &artifact) } {
                    Ok(c) => return Ok((c, CacheStatus::Hit)),
                    Err(e) => rebuilt = Some(format!("wasmtime refused the entry: {}", super::error_chain(&e))),
                }
            }
            Ok(None) => {}
            Err(why) => rebuilt = Some(why),
        }
        if let Some(why) = &rebuilt {
            tracing::warn!("plugin cache entry {} is corrupt ({why}); removing and recompiling", path.display());
            let _ = fs::remove_file(&path);
        }
        let artifact = engine.precompile_component(wasm)?;
        // SAFETY: produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &artifact)? };
        let status = match write_entry(&self.dir, &path, &artifact) {
            Ok(()) => rebuilt.map_or(CacheStatus::Miss, CacheStatus::Rebuilt),
            Err(e) => {
                tracing::warn!("cannot write plugin cache entry {}: {e}", path.display());
                CacheStatus::Disabled(format!("cannot write {}: {e}", path.display()))
            }
        };
        Ok((component, status))
    }
}

fn prepare_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_absolute() {
        return Err(format!("{}: not an absolute path", dir.display()));
    }
    if let Some(parent) = dir.parent() {
        DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.file_type().is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!("{}: owned by uid {}, not by uid {me}", dir.display(), meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        // Ours, but open to others: close it (entries in it are verified anyway).
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| format!("{}: chmod 700: {e}", dir.display()))?;
    }
    Ok(())
}

/// `Ok(Some(artifact))` for a valid entry, `Ok(None)` for no entry,
/// `Err(why)` for an entry that must not be used.
fn read_entry(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err("bad header".into());
    }
    let sum = &bytes[MAGIC.len()..MAGIC.len() + 32];
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[MAGIC.len() + 32..HEADER_LEN]);
    let artifact = &bytes[HEADER_LEN..];
    if u64::from_le_bytes(len) != artifact.len() as u64 {
        return Err(format!("length {} in the header, {} in the file", u64::from_le_bytes(len), artifact.len()));
    }
    if Sha256::digest(artifact).as_slice() != sum {
        return Err("checksum mismatch".into());
    }
    Ok(Some(artifact.to_vec()))
}

fn write_entry(dir: &Path, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&Sha256::digest(artifact))?;
        f.write_all(&(artifact.len() as u64).to_le_bytes())?;
        f.write_all(artifact)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
