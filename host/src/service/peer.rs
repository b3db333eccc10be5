//! Who is on the other end of a connection, from the kernel: `SO_PEERCRED`
//! (uid, gid, pid at connect time) and `SO_PEERGROUPS` (its supplementary
//! groups). The socket's file mode is a first fence; this is the check that
//! counts, so a socket made group-accessible by mistake still lets nobody
//! else in. (A connected fd handed on keeps the credentials of whoever
//! connected: the clients open theirs close-on-exec.)

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The peer's credentials as the kernel recorded them at connect time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Most supplementary groups read (the kernel's NGROUPS_MAX is 65536; a
/// member of more than this many groups is matched on its primary group
/// and the first ones only).
const MAX_GROUPS: usize = 1024;

impl Peer {
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<Peer> {
        let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: u32::MAX };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: the fd is open for the call; cred and len are ours and sized.
        let r = unsafe {
            libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut groups = vec![0 as libc::gid_t; MAX_GROUPS];
        let mut glen = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: as above; the buffer holds glen bytes.
        let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut glen) };
        if r == 0 {
            groups.truncate(glen as usize / std::mem::size_of::<libc::gid_t>());
        } else {
            // ERANGE: more than MAX_GROUPS; anything else (an old kernel):
            // only the primary group counts.
            groups.clear();
        }
        Ok(Peer { pid: cred.pid, uid: cred.uid, gid: cred.gid, groups })
    }

    /// Root, or a member (primary or supplementary) of the allowed group.
    pub fn authorized(&self, group: Option<u32>) -> bool {
        self.uid == 0 || group.is_some_and(|g| self.gid == g || self.groups.contains(&g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_or_the_group_only() {
        let p = |uid, gid, groups: &[u32]| Peer { pid: 1, uid, gid, groups: groups.to_vec() };
        assert!(p(0, 0, &[]).authorized(None));
        assert!(!p(1000, 1000, &[]).authorized(None));
        assert!(p(1000, 1000, &[4, 34]).authorized(Some(34)));
        assert!(p(1000, 34, &[]).authorized(Some(34)));
        assert!(!p(1000, 1000, &[4]).authorized(Some(34)));
    }

    #[test]
    fn reads_its_own_credentials_over_a_socketpair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        use std::os::fd::AsFd;
        let peer = Peer::of(a.as_fd()).expect("peer");
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
        assert_eq!(peer.pid, std::process::id() as i32);
    }
}
