//! What the adapter tests and benchmarks ask of a running service: one
//! protocol call on a [`crate::service::Conn`] that must succeed, and the
//! process's resident set and open fds.

use serde_json::{json, Value};

use crate::service::Conn;

/// Sends `{"v":1,"id":…,"op":op,…args}`; panics unless the reply is `ok`.
pub fn ok(conn: &mut Conn, op: &str, args: Value) -> Value {
    let mut req = json!({ "v": 1, "id": op, "op": op });
    if let (Some(r), Some(a)) = (req.as_object_mut(), args.as_object()) {
        r.extend(a.clone());
    }
    let reply = conn.call(req);
    assert_eq!(reply["ok"], true, "{op} failed: {reply}");
    reply
}

/// (RSS in kB, open fds) of a process, from /proc.
pub fn rss_fds(pid: u32) -> (u64, usize) {
    // Between sessions the service forks the next session's spare guardian
    // on a thread of its own, its socket and pipe open meanwhile: wait
    // until two looks agree.
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let mut last = fds();
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now = fds();
        if now == last {
            break;
        }
        last = now;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    (rss, fds())
}
