//! Raw Linux syscalls for a child that shares the host's address space
//! (`CLONE_VM`): such a child runs on the host thread's TLS, so it must not
//! call glibc's wrappers (they write that thread's `errno`, take locks, may
//! allocate). These leave every byte of host memory alone and return the
//! kernel's value (`-errno` on failure). Per architecture: x86-64 and arm64.

use std::ffi::c_void;

/// `syscall(n, a, b, c, d, e)`.
///
/// # Safety
/// As the syscall `n` with these arguments.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn syscall5(
    n: libc::c_long,
    a: libc::c_long,
    b: libc::c_long,
    c: libc::c_long,
    d: libc::c_long,
    e: libc::c_long,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the Linux x86-64 syscall convention; rcx and r11 are clobbered.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") n => ret, in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d, in("r8") e,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// `syscall(n, a, b, c, d, e)`.
///
/// # Safety
/// As the syscall `n` with these arguments.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn syscall5(
    n: libc::c_long,
    a: libc::c_long,
    b: libc::c_long,
    c: libc::c_long,
    d: libc::c_long,
    e: libc::c_long,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the Linux arm64 syscall convention.
    unsafe {
        std::arch::asm!("svc 0", in("x8") n, inlateout("x0") a => ret, in("x1") b, in("x2") c, in("x3") d, in("x4") e, options(nostack));
    }
    ret
}

/// `struct clone_args` as of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// `struct clone_args` as of Linux 5.3 (up to `tls`): what a kernel without
/// `CLONE_INTO_CGROUP` takes.
pub(crate) const CLONE_ARGS_SIZE_VER0: usize = 64;

/// Clones a child that shares the host's memory (`args.flags` holds
/// `CLONE_VM`) onto the stack `args` names, where it runs `child(arg)`.
/// Every signal is blocked around the clone, so the child starts with all
/// of them blocked and no host handler ever runs on its stack and TLS; the
/// calling thread's mask is restored at once.
///
/// # Safety
/// As [`clone3_on_stack`]: `args` is `size` bytes of a valid `clone_args`
/// whose stack outlives the child's use of it; `child` makes raw syscalls
/// only, on what `arg` points to.
pub(crate) unsafe fn clone_vm_child(
    args: &mut CloneArgs,
    size: usize,
    child: extern "C" fn(*mut c_void) -> !,
    arg: *mut c_void,
) -> std::io::Result<libc::pid_t> {
    debug_assert!(size <= std::mem::size_of::<CloneArgs>() && args.flags & libc::CLONE_VM as u64 != 0);
    // SAFETY: sigset_t is plain data; the old mask is restored right after;
    // the clone as the caller promised.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let r = clone3_on_stack((args as *mut CloneArgs).cast(), size, child, arg);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if r < 0 {
            Err(std::io::Error::from_raw_os_error((-r) as i32))
        } else {
            Ok(r as libc::pid_t)
        }
    }
}

/// `clone3(args, size)` for a child on a stack of its own (`args.stack`,
/// `args.stack_size`; its top 16-byte aligned): the child calls
/// `child(arg)` there, which must never return. Returns the child's pid to
/// the caller (or `-errno`). glibc exports no clone3, and a child on a new
/// stack cannot return into the Rust frame that made the call.
///
/// # Safety
/// `args` is a valid `struct clone_args` of `size` bytes with a stack the
/// child may use until it execs or exits; `child` is async-signal-safe and
/// touches only what `arg` points to (see the module doc).
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_on_stack(args: *mut c_void, size: usize, child: extern "C" fn(*mut c_void) -> !, arg: *mut c_void) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the child starts after `syscall` with rax = 0 and rsp at the
    // top of its stack (16-byte aligned, as a `call` needs); r12/r13 are
    // copied to it. The parent's path touches no stack.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args, in("rsi") size, in("r12") arg, in("r13") child,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// See the x86-64 version.
///
/// # Safety
/// As the x86-64 version.
#[cfg(target_arch = "aarch64")]
unsafe fn clone3_on_stack(args: *mut c_void, size: usize, child: extern "C" fn(*mut c_void) -> !, arg: *mut c_void) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the child starts after `svc` with x0 = 0 and sp at the top of
    // its stack; x20/x21 are copied to it (x19 is reserved by LLVM).
    unsafe {
        std::arch::asm!(
            "svc 0",
            "cbnz x0, 2f",
            "mov x29, xzr",
            "mov x0, x20",
            "blr x21",
            "brk #0",
            "2:",
            in("x8") libc::SYS_clone3, inlateout("x0") args => ret, in("x1") size, in("x20") arg, in("x21") child,
            lateout("x30") _,
            options(nostack),
        );
    }
    ret
}
