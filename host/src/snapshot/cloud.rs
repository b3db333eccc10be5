//! Cloud disks through their own CLIs (`az`, `aws`, `gcloud`), as argv
//! templates (see [`template`](super::template) for how values are kept
//! from injecting arguments).
//!
//! Why CLIs and not SDKs: the admin already has the CLI logged in (a
//! managed identity, an instance profile, a service account), and a
//! template lets them adjust a flag without a new quiesce.
//!
//! The snapshot is created while frozen, before the session has judged the
//! label, so it is tagged `quiesce-consistency=Pending`; the session's
//! [`finalize`](super::finalize) step then runs the tag-update template with
//! the final label. The ids the create call prints (its JSON reply) are the
//! point's ids; delete, restore and finalize run once per id.
//!
//! | kind  | create (default)                                    | id read from            | finalize                          |
//! |-------|-----------------------------------------------------|-------------------------|-----------------------------------|
//! | azure | `az snapshot create --incremental true --tags ..`   | `.id`                   | `az resource tag --is-incremental`|
//! | aws   | `aws ec2 create-snapshots --instance-specification` | `.Snapshots[].SnapshotId` | `aws ec2 create-tags`           |
//! | gcp   | `gcloud compute snapshots create --labels ..`       | `.[].name`              | `gcloud compute snapshots add-labels` |

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::run::{self, Step};
use super::{template, Action, Made, ProviderKind, SnapshotContext, SnapshotError, SnapshotProvider, TakeFuture};

/// Which cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudKind {
    Azure,
    Aws,
    Gcp,
}

impl CloudKind {
    pub fn provider(self) -> ProviderKind {
        match self {
            CloudKind::Azure => ProviderKind::Azure,
            CloudKind::Aws => ProviderKind::Aws,
            CloudKind::Gcp => ProviderKind::Gcp,
        }
    }
}

/// Placeholders the config fills (`[snapshot] disk = ...`).
pub const PARAMS: [&str; 4] = ["disk", "resource_group", "instance", "zone"];
/// Placeholders the session fills when the snapshot is made.
const SESSION: [&str; 6] = ["session", "consistency", "consistency_label", "mounts", "time", "name"];
/// Placeholders filled later: per id, the restore target, the final label.
const LATER: [&str; 4] = ["snapshot_id", "to", "consistency", "consistency_label"];

/// A cloud provider, resolved from the config: every template filled in
/// (defaults where the config gave none) and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloudSpec {
    pub kind: CloudKind,
    /// `disk`, `resource_group`, `instance`, `zone` as configured.
    pub params: BTreeMap<String, String>,
    /// The snapshot's name, itself a template (`quiesce-{session}`).
    pub name: String,
    pub create: Vec<String>,
    pub finalize: Vec<String>,
    pub delete: Vec<String>,
    pub restore: Vec<String>,
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The templates quiesce uses unless the config gives its own.
pub fn defaults(kind: CloudKind) -> [Vec<String>; 4] {
    match kind {
        CloudKind::Azure => [
            argv(&[
                "az",
                "snapshot",
                "create",
                "--resource-group",
                "{resource_group}",
                "--name",
                "{name}",
                "--source",
                "{disk}",
                "--incremental",
                "true",
                "--tags",
                "quiesce-session={session}",
                "quiesce-consistency={consistency}",
                "--output",
                "json",
            ]),
            // --is-incremental: add/replace these tags, keep the others.
            argv(&[
                "az",
                "resource",
                "tag",
                "--ids",
                "{snapshot_id}",
                "--is-incremental",
                "--tags",
                "quiesce-consistency={consistency}",
                "--output",
                "json",
            ]),
            argv(&["az", "snapshot", "delete", "--ids", "{snapshot_id}"]),
            argv(&[
                "az",
                "disk",
                "create",
                "--resource-group",
                "{resource_group}",
                "--name",
                "{to}",
                "--source",
                "{snapshot_id}",
                "--output",
                "json",
            ]),
        ],
        CloudKind::Aws => [
            argv(&[
                "aws",
                "ec2",
                "create-snapshots",
                "--instance-specification",
                "InstanceId={instance},ExcludeBootVolume=false",
                "--description",
                "quiesce-{session}",
                "--tag-specifications",
                "ResourceType=snapshot,Tags=[{Key=quiesce-session,Value={session}},{Key=quiesce-consistency,Value={consistency}}]",
                "--output",
                "json",
            ]),
            argv(&["aws", "ec2", "create-tags", "--resources", "{snapshot_id}", "--tags", "Key=quiesce-consistency,Value={consistency}"]),
            argv(&["aws", "ec2", "delete-snapshot", "--snapshot-id", "{snapshot_id}"]),
            argv(&[
                "aws",
                "ec2",
                "create-volume",
                "--snapshot-id",
                "{snapshot_id}",
                "--availability-zone",
                "{zone}",
                "--tag-specifications",
                "ResourceType=volume,Tags=[{Key=Name,Value={to}}]",
                "--output",
                "json",
            ]),
        ],
        CloudKind::Gcp => [
            argv(&[
                "gcloud",
                "compute",
                "snapshots",
                "create",
                "{name}",
                "--source-disk",
                "{disk}",
                "--source-disk-zone",
                "{zone}",
                "--labels",
                "quiesce-session={session},quiesce-consistency={consistency_label}",
                "--format",
                "json",
            ]),
            argv(&["gcloud", "compute", "snapshots", "add-labels", "{snapshot_id}", "--labels", "quiesce-consistency={consistency_label}"]),
            argv(&["gcloud", "compute", "snapshots", "delete", "{snapshot_id}", "--quiet"]),
            argv(&[
                "gcloud",
                "compute",
                "disks",
                "create",
                "{to}",
                "--source-snapshot",
                "{snapshot_id}",
                "--zone",
                "{zone}",
                "--format",
                "json",
            ]),
        ],
    }
}

impl CloudSpec {
    /// Fills in the default templates, and checks that every placeholder is
    /// known and every parameter a template uses is configured (and none is
    /// configured that no template uses: a typo).
    pub fn resolve(
        kind: CloudKind,
        params: BTreeMap<String, String>,
        name: Option<String>,
        overrides: [Option<Vec<String>>; 4],
    ) -> Result<CloudSpec, String> {
        let [create, finalize, delete, restore] = {
            let mut d = defaults(kind).into_iter();
            overrides.map(|o| {
                let default = d.next().unwrap_or_default();
                o.unwrap_or(default)
            })
        };
        let name = name.unwrap_or_else(|| "quiesce-{session}".into());
        let session_names: Vec<&str> = PARAMS.iter().chain(SESSION.iter()).copied().collect();
        let later: Vec<&str> = session_names.iter().chain(LATER.iter()).copied().collect();
        template::check("[snapshot] create", &create, &session_names)?;
        for (field, t) in [("finalize", &finalize), ("delete", &delete), ("restore", &restore)] {
            template::check(&format!("[snapshot] {field}"), t, &later)?;
        }
        let name_only: Vec<&str> = PARAMS.iter().copied().chain(["session", "time"]).collect();
        if let Some(bad) = template::names(std::slice::from_ref(&name)).find(|n| !name_only.contains(n)) {
            return Err(format!("[snapshot] `name` uses {{{bad}}}; it may use {}", name_only.join(", ")));
        }
        let all = [&create, &finalize, &delete, &restore, &vec![name.clone()]];
        let used: Vec<&str> = all.iter().flat_map(|t| template::names(t)).collect();
        for p in PARAMS {
            match (used.contains(&p), params.get(p)) {
                (true, None) => return Err(format!("[snapshot] kind = \"{}\" needs `{p}` (its templates use {{{p}}})", kind_name(kind))),
                (true, Some(v)) if v.is_empty() => return Err(format!("[snapshot] `{p}` is empty")),
                (false, Some(_)) => {
                    return Err(format!("[snapshot] `{p}` is set but no template of kind = \"{}\" uses {{{p}}}", kind_name(kind)))
                }
                _ => {}
            }
        }
        Ok(CloudSpec { kind, params, name, create, finalize, delete, restore })
    }
}

fn kind_name(kind: CloudKind) -> &'static str {
    kind.provider().as_str()
}

/// Takes the snapshot by running the create template.
pub struct CloudProvider {
    spec: CloudSpec,
}

impl CloudProvider {
    pub fn new(spec: CloudSpec) -> CloudProvider {
        CloudProvider { spec }
    }

    /// The session-time values: the config's parameters, the session's facts.
    fn values(&self, ctx: &SnapshotContext) -> Result<BTreeMap<&'static str, String>, SnapshotError> {
        let mut v: BTreeMap<&'static str, String> = BTreeMap::new();
        for p in PARAMS {
            if let Some(x) = self.spec.params.get(p) {
                v.insert(p, x.clone());
            }
        }
        v.insert("session", ctx.session_id.clone());
        v.insert("time", utc_stamp(std::time::SystemTime::now()));
        v.insert("mounts", ctx.frozen_mounts.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(":"));
        let name = template::render(std::slice::from_ref(&self.spec.name), &|n| v.get(n).cloned(), true)?;
        v.insert("name", name.concat());
        Ok(v)
    }
}

impl SnapshotProvider for CloudProvider {
    fn describe(&self) -> String {
        format!("{}: {}", kind_name(self.spec.kind), self.spec.create.join(" "))
    }

    fn take<'a>(&'a self, ctx: &'a SnapshotContext) -> TakeFuture<'a> {
        Box::pin(async move {
            let values = self.values(ctx)?;
            // Created while frozen: the label is not judged yet.
            let now = |n: &str| match n {
                "consistency" => Some(template::consistency(None).to_string()),
                "consistency_label" => Some(template::consistency_label(None).to_string()),
                _ => values.get(n).cloned(),
            };
            let create = template::render(&self.spec.create, &now, true)?;
            let out = run::run_argv(&create, "snapshot").await?;
            let provider = self.spec.kind.provider();
            let (ids, _) = ids_from_output(provider, Step::Create, &out.stdout)?;
            // The later steps keep {snapshot_id}, {to} and the label open.
            let later = |n: &str| if LATER.contains(&n) { None } else { values.get(n).cloned() };
            let step = |t: &[String]| template::render(t, &later, false).map(|argv| Some(Action::Argv { argv }));
            let mut made = Made::new(provider, ids, Vec::new());
            made.finalize = step(&self.spec.finalize)?;
            made.delete = step(&self.spec.delete)?;
            made.restore = step(&self.spec.restore)?;
            Ok(made)
        })
    }
}

/// `20261130T055000Z`: sortable, and nothing in it needs escaping.
fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), for years ≥ 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Ids a CLI prints: the most a reply may name.
const MAX_IDS: usize = 64;

/// The ids a create or restore step printed in its JSON reply (`Create` and
/// `Restore`; other steps' output is only logged). Each id is checked: it
/// becomes part of later argvs and of the catalog.
pub(super) fn ids_from_output(kind: ProviderKind, step: Step, stdout: &[String]) -> Result<(Vec<String>, Vec<PathBuf>), SnapshotError> {
    if !matches!(step, Step::Create | Step::Restore) || kind == ProviderKind::Command {
        return Ok((Vec::new(), Vec::new()));
    }
    let text = stdout.join("\n");
    let what = if step == Step::Create { "snapshot" } else { "restored disk" };
    let reply: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        SnapshotError::Other(format!(
            "the {} CLI's reply is not JSON ({e}); its template must ask for JSON output (`--output json` / `--format json`) so quiesce can read the {what} id",
            kind.as_str()
        ))
    })?;
    let field = |v: &serde_json::Value, key: &str| v.get(key).and_then(|x| x.as_str()).map(String::from);
    let items = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        match v {
            serde_json::Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        }
    };
    let ids: Vec<String> = match (kind, step) {
        (ProviderKind::Aws, Step::Create) => {
            reply.get("Snapshots").map(items).unwrap_or_default().iter().filter_map(|s| field(s, "SnapshotId")).collect()
        }
        (ProviderKind::Aws, _) => field(&reply, "VolumeId").into_iter().collect(),
        (ProviderKind::Gcp, _) => items(&reply).iter().filter_map(|s| field(s, "name")).collect(),
        _ => items(&reply).iter().filter_map(|s| field(s, "id")).collect(),
    };
    if ids.is_empty() {
        return Err(SnapshotError::Other(format!("the {} CLI's reply names no {what} id", kind.as_str())));
    }
    if ids.len() > MAX_IDS {
        return Err(SnapshotError::Unsafe(format!("the {} CLI's reply names {} ids (at most {MAX_IDS})", kind.as_str(), ids.len())));
    }
    for id in &ids {
        if id.is_empty() || id.len() > 1024 || id.starts_with('-') || template::escape(id) != *id {
            return Err(SnapshotError::Unsafe(format!("the {} CLI printed the id {id:?}, which quiesce will not pass on", kind.as_str())));
        }
    }
    Ok((ids, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_are_civil_dates() {
        let t = |s| utc_stamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(t(0), "19700101T000000Z");
        assert_eq!(t(951_782_400), "20000229T000000Z");
        assert_eq!(t(1_796_024_425), "20261130T074025Z");
    }

    #[test]
    fn config_typos_and_missing_parameters_are_named() {
        let p = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        let none = [None, None, None, None];
        let e = CloudSpec::resolve(CloudKind::Azure, p(&[("disk", "d")]), None, none.clone()).unwrap_err();
        assert!(e.contains("resource_group"), "{e}");
        let e =
            CloudSpec::resolve(CloudKind::Aws, p(&[("instance", "i-1"), ("zone", "z"), ("disk", "d")]), None, none.clone()).unwrap_err();
        assert!(e.contains("`disk` is set but"), "{e}");
        assert!(CloudSpec::resolve(CloudKind::Gcp, p(&[("disk", "d"), ("zone", "z")]), None, none).is_ok());
    }

    #[test]
    fn ids_come_from_each_clouds_reply_and_are_checked() {
        let lines = |s: &str| s.lines().map(String::from).collect::<Vec<_>>();
        let aws = lines(r#"{"Snapshots":[{"SnapshotId":"snap-1","VolumeId":"vol-1"},{"SnapshotId":"snap-2"}]}"#);
        assert_eq!(ids_from_output(ProviderKind::Aws, Step::Create, &aws).unwrap().0, vec!["snap-1", "snap-2"]);
        let gcp = lines(r#"[{"id":"123","name":"quiesce-q-1"}]"#);
        assert_eq!(ids_from_output(ProviderKind::Gcp, Step::Create, &gcp).unwrap().0, vec!["quiesce-q-1"]);
        let evil = lines(r#"{"id":"/subscriptions/x --yes"}"#);
        assert!(matches!(ids_from_output(ProviderKind::Azure, Step::Create, &evil), Err(SnapshotError::Unsafe(_))));
        assert!(ids_from_output(ProviderKind::Azure, Step::Create, &lines("Succeeded")).is_err());
        assert!(ids_from_output(ProviderKind::Azure, Step::Finalize, &lines("not json")).is_ok());
    }
}
