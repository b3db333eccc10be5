//! The on-disk cache of compiled plugins.
//!
//! Compiling a component takes 100+ ms; loading the compiled artifact takes
//! about one. Loading an artifact is `unsafe` in wasmtime's sense: it is
//! native code, mapped and run as is, as root. Whoever can put a file in the
//! cache runs code as root under any plugin's name. So an entry is only
//! ever used if
//!
//! - the cache directory passed the same walk as scripts
//!   ([`trust::open_trusted_dir`]): it and every directory above it are
//!   root's alone. A directory that fails is *not* repaired (a `chmod` would
//!   keep whatever was planted while it was open): the cache is bypassed,
//!   plugins are compiled in memory, and a warning names the fix;
//! - it is opened beneath that directory's fd, `O_NOFOLLOW`, and is a
//!   regular file of bounded size;
//! - its MAC verifies under this machine's cache key (32 bytes from the OS
//!   RNG, created `O_EXCL`, mode 0600, in the trusted directory) over the
//!   entry's name and content. A checksum would only catch corruption; the
//!   MAC also refuses an entry someone else wrote, and one renamed from
//!   another plugin's key (the name is inside the MAC). The MAC is keyed
//!   BLAKE3: a one-shot session verifies the whole entry (~180 KiB for a
//!   small plugin) on every load, and BLAKE3 does that several times faster
//!   than HMAC-SHA256 (0.03 ms against 0.15 ms here).
//!
//! Entry names are sha256 of the engine's compatibility hash (wasmtime
//! version, target, compiler settings) and the sha256 of the plugin's bytes
//! (the digest the plugin is reported by: the bytes are hashed once per
//! load). Anything that
//! fails — truncated, bit-flipped, planted, swapped — is logged, removed
//! and rebuilt; it is never deserialized. Entries are written `O_EXCL` to a
//! temporary name and renamed into place, so a crash leaves no half entry.
//!
//! An entry is the artifact exactly as wasmtime wrote it, then a trailer
//! (magic, MAC, artifact length): the artifact starts at offset 0, so
//! wasmtime can map the file itself instead of copying it into fresh
//! memory. The entry is mapped (`MAP_PRIVATE`, read-only) from the fd that
//! was opened and checked, the MAC is computed over that mapping, and
//! wasmtime maps the same inode through `/proc/self/fd/N` — not the name,
//! which could have been replaced since. Entries are never written in
//! place (a rebuild writes a new inode and renames it over the old name),
//! so the verified inode's content can change only by root writing into a
//! root-only file on purpose. Where `/proc` is missing or the directory is
//! on a `noexec` mount, the artifact is copied from the verified mapping,
//! as before.

use std::ffi::OsStr;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag};
use nix::sys::mman::{self, MapFlags, ProtFlags};
use nix::sys::stat::{self, FileStat, Mode, SFlag};
use nix::unistd::{self, UnlinkatFlags};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::trust;

/// Starts every entry's trailer; bump the version when the layout or the
/// MAC changes (an entry of another version fails and is rebuilt).
const MAGIC: &[u8; 16] = b"quiesce-cwasm-3\n";
/// After the artifact: magic, MAC, artifact length (u64 LE).
pub(crate) const TRAILER_LEN: usize = MAGIC.len() + TAG_LEN + 8;
const TAG_LEN: usize = 32;
/// Compiled plugins are a few MiB; anything far larger is not ours.
const MAX_ENTRY_BYTES: u64 = 512 << 20;
/// The per-machine MAC key, in the cache directory.
const KEY_NAME: &str = "cache.key";
const KEY_LEN: usize = 32;

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
    /// Compiled without the cache (untrusted directory, write failure).
    Disabled(String),
    /// The same unchanged file was loaded before by this process (the
    /// service keeps its plugins loaded): nothing was read or compiled.
    Memory,
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

/// The plugin's digest: what the cache key is made of and what reports show.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug)]
pub(crate) struct Cache {
    dir: PathBuf,
    /// The checked directory and its key, or why the cache is bypassed.
    state: Result<Trusted, String>,
}

struct Trusted {
    dir: OwnedFd,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Trusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trusted").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Cache {
    /// Creates the directory (0700, beneath checked directories) if needed.
    /// A directory that fails the trust walk bypasses the cache (with a
    /// warning that names the fix) rather than failing the session.
    pub fn open(dir: &Path) -> Cache {
        let state = open_trusted(dir);
        if let Err(why) = &state {
            tracing::warn!("plugin cache bypassed: {why}; plugins are compiled on every load until this is fixed");
        }
        Cache { dir: dir.to_path_buf(), state }
    }

    /// No cache at all: every load compiles in memory, nothing is written
    /// (`inspect` by a user who is not root).
    pub fn disabled(why: &str) -> Cache {
        Cache { dir: PathBuf::new(), state: Err(why.to_owned()) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry key for a plugin whose bytes have the sha256 `wasm_sha256`.
    pub fn key(engine: &Engine, wasm_sha256: &[u8; 32]) -> String {
        let mut h = ShaHasher(Sha256::new());
        MAGIC.hash(&mut h);
        engine.precompile_compatibility_hash().hash(&mut h);
        h.0.update(wasm_sha256);
        hex(&h.0.finalize())
    }

    pub fn entry_name(key: &str) -> String {
        format!("{key}.cwasm")
    }

    pub fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(Cache::entry_name(key))
    }

    /// Whether a verified entry exists for `wasm` (reads it; deserializes nothing).
    pub fn contains(&self, engine: &Engine, wasm: &[u8]) -> bool {
        let Ok(t) = &self.state else { return false };
        let name = Cache::entry_name(&Cache::key(engine, &sha256(wasm)));
        matches!(t.read_entry(&name), Ok(Some(_)))
    }

    /// The compiled component for `wasm` (whose sha256 is `wasm_sha256`),
    /// from the cache or freshly compiled.
    pub fn load_or_compile(&self, engine: &Engine, wasm: &[u8], wasm_sha256: &[u8; 32]) -> wasmtime::Result<(Component, CacheStatus)> {
        let t = match &self.state {
            Ok(t) => t,
            Err(why) => return Ok((Component::new(engine, wasm)?, CacheStatus::Disabled(why.clone()))),
        };
        let key = Cache::key(engine, wasm_sha256);
        let name = Cache::entry_name(&key);
        let path = self.entry_path(&key);
        let mut rebuilt = None;
        match t.read_entry(&name) {
            Ok(Some(entry)) => {
                // SAFETY: the entry sits in a directory only root can write,
                // was opened without following links, and its MAC under this
                // machine's key (over name and content) verified just now:
                // this host wrote it for exactly these plugin bytes.
                match unsafe { entry.deserialize(engine) } {
                    Ok(c) => return Ok((c, CacheStatus::Hit)),
                    Err(e) => rebuilt = Some(format!("wasmtime refused the entry: {}", super::error_chain(&e))),
                }
            }
            Ok(None) => {}
            Err(why) => rebuilt = Some(why),
        }
        if let Some(why) = &rebuilt {
            tracing::warn!("plugin cache entry {} is unusable ({why}); removing it and recompiling", path.display());
            let _ = unistd::unlinkat(&t.dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        let artifact = engine.precompile_component(wasm)?;
        // SAFETY: produced by this engine a moment ago, never left memory.
        let component = unsafe { Component::deserialize(engine, &artifact)? };
        let status = match t.write_entry(&name, &artifact) {
            Ok(()) => rebuilt.map_or(CacheStatus::Miss, CacheStatus::Rebuilt),
            Err(e) => {
                tracing::warn!("cannot write plugin cache entry {}: {e}", path.display());
                CacheStatus::Disabled(format!("cannot write {}: {e}", path.display()))
            }
        };
        Ok((component, status))
    }
}

/// The trusted directory and its key, or why the cache cannot be used.
fn open_trusted(dir: &Path) -> Result<Trusted, String> {
    let fd = trust::create_trusted_dir(dir, 0o700).map_err(|e| e.to_string())?;
    let key = load_or_create_key(&fd).map_err(|e| format!("{}/{KEY_NAME}: {e}", dir.display()))?;
    Ok(Trusted { dir: fd, key })
}

/// Opens `name` beneath `dir` for reading: not through a symlink, regular
/// files only (`O_NONBLOCK`, so a FIFO cannot hang the open).
fn open_regular(dir: &OwnedFd, name: &str) -> Result<Option<(File, FileStat)>, String> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = match fcntl::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err("a symbolic link".into()),
        Err(e) => return Err(e.to_string()),
    };
    let st = stat::fstat(&fd).map_err(|e| e.to_string())?;
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Err("not a regular file".into());
    }
    Ok(Some((File::from(fd), st)))
}

/// Reads the key; creates it (`O_EXCL`, 0600, from the OS RNG) if there is
/// none. A key that is not ours alone or not 32 bytes is replaced, which
/// makes every existing entry fail verification and be rebuilt.
fn load_or_create_key(dir: &OwnedFd) -> Result<[u8; KEY_LEN], String> {
    for _ in 0..2 {
        if let Some((mut f, st)) = open_regular(dir, KEY_NAME)? {
            let mut key = [0u8; KEY_LEN];
            let mut extra = Vec::new();
            let ok = st.st_uid == unistd::geteuid().as_raw()
                && st.st_mode & 0o077 == 0
                && f.read_exact(&mut key).is_ok()
                && (&mut f).take(1).read_to_end(&mut extra).is_ok_and(|n| n == 0);
            if ok {
                return Ok(key);
            }
            tracing::warn!("plugin cache key is not ours alone or not {KEY_LEN} bytes: replacing it (every entry will be rebuilt)");
            unistd::unlinkat(dir, KEY_NAME, UnlinkatFlags::NoRemoveDir).map_err(|e| format!("cannot remove: {e}"))?;
        }
        let mut key = [0u8; KEY_LEN];
        fill_random(&mut key)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match fcntl::openat(dir, KEY_NAME, flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => {
                let mut f = File::from(fd);
                f.write_all(&key).and_then(|()| f.sync_all()).map_err(|e| format!("cannot write: {e}"))?;
                return Ok(key);
            }
            // Another process created it between our look and our create: read theirs.
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(format!("cannot create: {e}")),
        }
    }
    Err("changed under us twice; is another process fighting over it?".into())
}

/// `getrandom(2)`: blocks only until the kernel's pool is initialised.
fn fill_random(buf: &mut [u8]) -> Result<(), String> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) if Errno::last() == Errno::EINTR => {}
            Err(_) => return Err(format!("getrandom: {}", Errno::last())),
        }
    }
    Ok(())
}

/// An entry whose MAC verified: the open file and its read-only mapping.
struct Entry {
    file: File,
    map: Mapping,
    /// Bytes of the artifact at the start of the mapping (the rest is the trailer).
    artifact_len: usize,
}

impl Entry {
    fn artifact(&self) -> &[u8] {
        &self.map.bytes()[..self.artifact_len]
    }

    /// The component, from wasmtime's own mapping of the verified inode
    /// (`/proc/self/fd/N` names the open file, not the path); copied from
    /// the verified mapping where that cannot work (no `/proc`, a `noexec`
    /// cache directory).
    ///
    /// # Safety
    /// The entry's MAC verified under this machine's key (see [`Trusted::read_entry`]).
    unsafe fn deserialize(&self, engine: &Engine) -> wasmtime::Result<Component> {
        let fd_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        // SAFETY: the caller's contract: this host wrote exactly these bytes,
        // and `/proc/self/fd/N` reopens the inode they were read from.
        match unsafe { Component::deserialize_file(engine, &fd_path) } {
            Ok(c) => Ok(c),
            Err(e) => {
                tracing::debug!("cannot map the plugin cache entry ({}); copying it instead", super::error_chain(&e));
                // SAFETY: as above; these are the very bytes the MAC covered.
                unsafe { Component::deserialize(engine, self.artifact()) }
            }
        }
    }
}

/// A read-only private mapping of a whole file, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a read-only mapping owned by this value alone.
unsafe impl Send for Mapping {}

impl Mapping {
    fn of(file: &File, len: NonZeroUsize) -> Result<Mapping, String> {
        // SAFETY: a fresh read-only mapping at an address the kernel picks;
        // nothing else aliases it.
        let ptr = unsafe { mman::mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE, file, 0) }
            .map_err(|e| format!("cannot map: {e}"))?;
        Ok(Mapping { ptr: ptr.cast(), len: len.get() })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes mapped at `ptr` until drop. The file
        // is root's alone in a root-only directory and this host never
        // shrinks an entry in place (it renames a new one over it), so no
        // page of the mapping goes past the end of the file.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `of` with this length, unmapped once.
        let _ = unsafe { mman::munmap(self.ptr.cast(), self.len) };
    }
}

impl Trusted {
    fn mac(&self, name: &str, artifact: &[u8]) -> blake3::Hash {
        let mut mac = blake3::Hasher::new_keyed(&self.key);
        mac.update(MAGIC);
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name.as_bytes());
        mac.update(&(artifact.len() as u64).to_le_bytes());
        mac.update(artifact);
        mac.finalize()
    }

    /// `Ok(Some(entry))` for an authentic entry, `Ok(None)` for no
    /// entry, `Err(why)` for an entry that must not be used.
    fn read_entry(&self, name: &str) -> Result<Option<Entry>, String> {
        let Some((file, st)) = open_regular(&self.dir, name)? else { return Ok(None) };
        // Only this host (root) writes entries, 0600: anything else was put
        // here some other way and is not even mapped.
        if st.st_uid != unistd::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
            return Err(format!("owned by uid {} with mode {:o}, not this host's 0600 file", st.st_uid, st.st_mode & 0o7777));
        }
        let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
        if size > MAX_ENTRY_BYTES {
            return Err(format!("larger than {} MiB", MAX_ENTRY_BYTES >> 20));
        }
        let size = usize::try_from(size).map_err(|_| "too large to map".to_string())?;
        if size < TRAILER_LEN {
            return Err("bad trailer".into());
        }
        let Some(len) = NonZeroUsize::new(size) else { return Err("bad trailer".into()) };
        let map = Mapping::of(&file, len)?;
        let bytes = map.bytes();
        let (artifact, trailer) = bytes.split_at(size - TRAILER_LEN);
        let (magic, rest) = trailer.split_at(MAGIC.len());
        let (tag, stated) = rest.split_at(TAG_LEN);
        if magic != MAGIC {
            return Err("bad trailer".into());
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(stated);
        if u64::from_le_bytes(len) != artifact.len() as u64 {
            return Err(format!("length {} in the trailer, {} in the file", u64::from_le_bytes(len), artifact.len()));
        }
        let Ok(tag) = <[u8; TAG_LEN]>::try_from(tag) else { return Err("bad trailer".into()) };
        // `blake3::Hash` compares in constant time.
        if self.mac(name, artifact) != blake3::Hash::from_bytes(tag) {
            return Err("not authentic (its MAC does not verify under this machine's cache key)".into());
        }
        let artifact_len = artifact.len();
        Ok(Some(Entry { file, map, artifact_len }))
    }

    fn write_entry(&self, name: &str, artifact: &[u8]) -> std::io::Result<()> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tmp = format!(".tmp-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let result = (|| {
            let mut f = File::from(fcntl::openat(&self.dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o600))?);
            f.write_all(artifact)?;
            f.write_all(MAGIC)?;
            f.write_all(self.mac(name, artifact).as_bytes())?;
            f.write_all(&(artifact.len() as u64).to_le_bytes())?;
            f.sync_all()?;
            fcntl::renameat(&self.dir, tmp.as_str(), &self.dir, OsStr::new(name))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = unistd::unlinkat(&self.dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        result
    }
}
