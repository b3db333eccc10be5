"""A client for the quiesce service (protocol v1), standard library only.

    from quiesce_client import Quiesce
    q = Quiesce()                                   # $QUIESCE_SOCKET or /run/quiesce/quiesce.sock
    s = q.call("begin", freeze="external")          # pre hooks ran; take the snapshot now
    r = q.call("end", session_id=s["session_id"], snapshot="taken", snapshot_id="snap-1")
    print(r["report"]["consistency"], r["exit_code"])

A refused request raises QuiesceError with the service's error code; a
service that is gone raises OSError (ConnectionError).
Command line: python3 quiesce_client.py OP [KEY=TEXT | KEY:=JSON]... prints the
reply; exit 0, 4 refused, 5 unreachable, 2 bad arguments (as quiesce-client).
"""
import itertools, json, os, socket, sys


class QuiesceError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class Quiesce:
    def __init__(self, path=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path or os.environ.get("QUIESCE_SOCKET") or "/run/quiesce/quiesce.sock")
        self.lines, self.ids = self.sock.makefile("rb"), itertools.count(1)

    def call(self, op, **args):
        req = {"v": 1, "id": next(self.ids), "op": op, **args}
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        line = self.lines.readline()
        if not line:
            raise ConnectionError("the quiesce service closed the connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise QuiesceError(error.get("code", "Unknown"), error.get("message", ""))
        return reply


def _usage(why):
    print(f"quiesce_client.py: {why}; usage: quiesce_client.py OP [KEY=TEXT | KEY:=JSON]...", file=sys.stderr)
    sys.exit(2)


def _arg(text):
    """KEY:=JSON (a number, a list, true) or KEY=TEXT (always a string: a snapshot id of digits stays one)."""
    key, sep, value = text.partition("=")
    if not sep or not key.rstrip(":"):
        _usage(f"{text!r} is not KEY=TEXT or KEY:=JSON")
    return (key[:-1], json.loads(value)) if key.endswith(":") else (key, value)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        _usage("no OP")
    try:
        args = dict(_arg(a) for a in sys.argv[2:])
    except ValueError as e:
        _usage(f"not JSON after := ({e})")
    try:
        print(json.dumps(Quiesce().call(sys.argv[1], **args)))
    except QuiesceError as e:
        print(json.dumps({"ok": False, "code": e.code, "message": e.message}))
        sys.exit(2 if e.code == "BadRequest" else 4)
    except (OSError, ValueError) as e:
        print(f"quiesce_client.py: cannot use the quiesce service: {e}", file=sys.stderr)
        sys.exit(5)
