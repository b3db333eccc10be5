//! Expedited RCU grace periods for the length of a freeze.
//!
//! FIFREEZE switches each of a file system's three writer levels
//! (`percpu_rw_semaphore`) into their slow mode, and each switch waits for
//! an RCU grace period (`rcu_sync_enter` → `synchronize_rcu`) unless the
//! level was frozen moments before. Cold, that is 20–47 ms per file system
//! here, in sequence, most of a snapshot's freeze window, and a database
//! paused in its pre hook stalls through all of it. With
//! `/sys/kernel/rcu_expedited` set, `synchronize_rcu` takes the expedited
//! path: 0.1–0.3 ms per file system on the same loop mounts.
//!
//! The knob is global, so it is set only from the first FIFREEZE to the
//! last, and only if it was 0 (an admin's 1 is left alone); a kernel booted
//! with `rcupdate.rcu_normal=1` (real-time setups) turns expedited requests
//! back into normal ones by itself. Without the file, or with a read-only
//! `/sys` (a container), freezing works as before. Async-signal-safe: the
//! guardian calls it between fork and exit.

use std::ffi::CStr;
use std::os::fd::RawFd;

const KNOB: &CStr = c"/sys/kernel/rcu_expedited";

/// Sets the knob if it was 0; the fd to [`restore`] it through, or -1 when
/// nothing was changed.
///
/// # Safety
/// Async-signal-safe calls only; the caller owns the returned fd.
pub(super) unsafe fn expedite() -> RawFd {
    // SAFETY: open/pread/pwrite/close on a static path and a local byte.
    unsafe {
        let fd = libc::open(KNOB.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if fd < 0 {
            return -1;
        }
        let mut was = 0u8;
        if libc::pread(fd, (&mut was as *mut u8).cast(), 1, 0) == 1 && was == b'0' && libc::pwrite(fd, b"1".as_ptr().cast(), 1, 0) == 1 {
            return fd;
        }
        libc::close(fd);
        -1
    }
}

/// Puts the knob back to 0 if [`expedite`] set it.
///
/// # Safety
/// `fd` is what `expedite` returned (consumed).
pub(super) unsafe fn restore(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: write and close of the fd `expedite` opened.
        unsafe {
            libc::pwrite(fd, b"0".as_ptr().cast(), 1, 0);
            libc::close(fd);
        }
    }
}

/// The knob's path, for messages.
pub fn knob_path() -> &'static str {
    KNOB.to_str().unwrap_or_default()
}

/// What the knob reads now: `Some(true)` expedited, `Some(false)` normal,
/// `None` no such file or unreadable.
pub fn expedited_now() -> Option<bool> {
    match std::fs::read(knob_path()).ok()?.first()? {
        b'0' => Some(false),
        b'1' => Some(true),
        _ => None,
    }
}

/// Whether the knob reads 0 now (the host asks before a freeze, so that it
/// can put it back itself if the guardian dies in the middle of one).
pub(super) fn is_normal() -> bool {
    expedited_now() == Some(false)
}

/// Sets the knob back to 0 (after a guardian died with it set).
pub(super) fn set_normal() {
    if let Err(e) = std::fs::write(knob_path(), "0") {
        tracing::warn!("cannot reset {} to 0 after the guardian died mid-freeze: {e}", KNOB.to_string_lossy());
    }
}
