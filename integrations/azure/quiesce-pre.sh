#!/bin/sh
# quiesce pre wrapper for the Azure VM snapshot extension (and any agent that
# runs one pre script, freezes and snapshots itself, then runs one post script).
#
# Referenced as "preScriptLocation" from /etc/azure/VMSnapshotScriptPluginConfig.json
# (see VMSnapshotScriptPluginConfig.json next to this file). Install it the way the
# extension insists on, or it will not run it:
#   install -o root -g root -m 700 quiesce-pre.sh /etc/azure/quiesce-pre.sh
#
# It begins an `external` quiesce session (the extension freezes, not quiesce),
# tagged `azure` so that quiesce-post.sh ends this one and no other agent's:
# the quiesce service runs the plugins' pre hooks and keeps their locks held
# until quiesce-post.sh ends the session, or until the hold deadline
# ([service] external_hold_secs, or --hold SECS in preScriptParams) passes.
# Exit 0: every pre hook succeeded, go ahead. Non-zero: the extension reports
# Pre-ScriptExecutionFailed (and, with continueBackupOnFailure, takes a
# file-system-consistent snapshot): a pre hook failed, and this script has
# already ended the session (post hooks ran, every lock is released) so
# nothing stays held for a snapshot that will not be application-consistent.
#
# preScriptParams are passed to `quiesce begin` (e.g. ["--hold", "300"]); the
# template's empty strings are dropped. $QUIESCE_BIN and $QUIESCE_SOCKET
# override the binary and the service socket.
for a; do shift; [ -z "$a" ] || set -- "$@" "$a"; done
q=${QUIESCE_BIN:-/usr/bin/quiesce-client}
reply=$("$q" begin --freeze external --tag azure --json "$@") || exit
printf '%s\n' "$reply"
# The reply is compact JSON: no error at all reads exactly "errors":[].
case $reply in *'"errors":[]'*) exit 0 ;; esac
id=$(printf '%s' "$reply" | sed -n 's/.*"session_id":"\([^"]*\)".*/\1/p')
"$q" end ${id:+"$id"} --snapshot-failed >&2
echo "quiesce: a pre hook failed (errors above); session ended, locks released" >&2
exit 1
