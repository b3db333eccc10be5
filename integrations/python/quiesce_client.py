"""A client for the quiesce service (protocol v1), standard library only.

    from quiesce_client import Quiesce
    q = Quiesce()                                   # $QUIESCE_SOCKET or /run/quiesce/quiesce.sock
    s = q.call("begin", freeze="external")          # pre hooks ran; take the snapshot now
    r = q.call("end", session_id=s["session_id"], snapshot="taken", snapshot_id="snap-1")
    print(r["report"]["consistency"], r["exit_code"])

A refused request raises QuiesceError with the service's error code.
Command line: python3 quiesce_client.py OP [KEY=JSON_OR_TEXT]... prints the reply.
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
        reply = json.loads(self.lines.readline())
        if not reply.get("ok"):
            raise QuiesceError(reply["error"]["code"], reply["error"]["message"])
        return reply


def _value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


if __name__ == "__main__":
    args = dict(a.split("=", 1) for a in sys.argv[2:])
    try:
        print(json.dumps(Quiesce().call(sys.argv[1], **{k: _value(v) for k, v in args.items()})))
    except QuiesceError as e:
        print(json.dumps({"ok": False, "code": e.code, "message": e.message}))
        sys.exit(4)
