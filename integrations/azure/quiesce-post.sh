#!/bin/sh
# quiesce post wrapper for the Azure VM snapshot extension: ends the session
# quiesce-pre.sh began (tagged `azure`: another agent's session is left alone) (post hooks, release of every lock, the report in
# `quiesce` service's last-report and the recovery point).
#
# Referenced as "postScriptLocation" from /etc/azure/VMSnapshotScriptPluginConfig.json;
# install it root-owned, mode 700:
#   install -o root -g root -m 700 quiesce-post.sh /etc/azure/quiesce-post.sh
#
# The extension runs the post script whether or not its snapshot succeeded and
# does not say which; the session is ended as `--snapshot-taken` unless
# postScriptParams say otherwise (e.g. ["--snapshot-failed"], or
# ["--snapshot-id", "ID"]). Exits with `quiesce end`'s status: 0 AppConsistent,
# 3 taken with errors, 4 no snapshot; 0 when there was no session left to end.
for a; do shift; [ -z "$a" ] || set -- "$@" "$a"; done
q=${QUIESCE_BIN:-/usr/bin/quiesce-client}
# The pre script ended the session itself when a pre hook failed (or the
# hold deadline did): nothing is left to end, which is not a failure
# (--missing-ok: told by the service, not read from output a hook wrote).
exec "$q" end --tag azure --missing-ok "$@"
