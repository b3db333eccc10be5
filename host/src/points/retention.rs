//! Which recovery points a retention policy keeps: a pure planner, the
//! points' times given, no clock read, so a synthetic year can be tested.
//!
//! The rules are restic's (`restic forget --keep-*`), which borg's mostly
//! share, so an admin who knows either knows these:
//! - `keep_last = n`: the n most recent points.
//! - `keep_hourly/daily/weekly/monthly = n`: for the n most recent hours
//!   (days, weeks, months) that have a point, the most recent point of each.
//! - Every rule counts on its own (restic): a point kept by `keep_last`
//!   still counts as its day's point for `keep_daily`. (borg instead skips
//!   points an earlier rule kept, so it can reach further back; with
//!   quiesce's point cap, restic's narrower reach is the safer surprise.)
//! - A point kept by any rule is kept. No rule at all keeps everything
//!   (restic refuses an empty policy rather than deleting every snapshot).
//!
//! Periods are UTC (hours, days, ISO weeks starting on Monday, calendar
//! months): unlike restic's local time, a daylight-saving change never makes
//! two "days" out of one or hides a point.
//!
//! One addition: a rule may count only `AppConsistent` points
//! (`app_consistent_only = ["daily", "weekly"]`), so that the daily, weekly
//! or monthly points kept are ones a database restores from without crash
//! recovery, while `keep_last` still keeps the latest of any label.
//!
//! And one separation: the rules count the snapshots quiesce can delete
//! (its own: reflink, btrfs, a command or cloud snapshot with a delete step)
//! apart from the records of snapshots it cannot (an agent's, driven through
//! the service). A qemu-ga or Velero schedule, or a group member looping
//! `begin`/`end`, records points quickly; counted together, they would push
//! the timer's real snapshots out of `keep_last` and `keep_daily`, and a
//! prune would delete them. Each kind keeps its own `keep_*` points.

use serde::{Deserialize, Serialize};

/// A retention rule, as the config and the plan name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

impl Rule {
    pub const ALL: [Rule; 5] = [Rule::Last, Rule::Hourly, Rule::Daily, Rule::Weekly, Rule::Monthly];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
        }
    }

    /// The period a point falls in (None for `last`: every point is its own).
    fn period(self, unix_ms: u64) -> Option<i64> {
        const HOUR_MS: u64 = 3_600_000;
        const DAY_MS: u64 = 24 * HOUR_MS;
        let days = (unix_ms / DAY_MS) as i64;
        match self {
            Rule::Last => None,
            Rule::Hourly => Some((unix_ms / HOUR_MS) as i64),
            Rule::Daily => Some(days),
            // 1970-01-01 was a Thursday: day + 3 counts from Monday 1969-12-29,
            // so weeks start on Monday as ISO 8601 weeks do.
            Rule::Weekly => Some((days + 3).div_euclid(7)),
            Rule::Monthly => {
                let c = civil(unix_ms);
                Some(c.year * 12 + i64::from(c.month) - 1)
            }
        }
    }
}

/// `keep_*` counts and which rules count only `AppConsistent` points.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub app_consistent_only: Vec<Rule>,
}

impl Policy {
    pub fn count(&self, rule: Rule) -> u32 {
        match rule {
            Rule::Last => self.keep_last,
            Rule::Hourly => self.keep_hourly,
            Rule::Daily => self.keep_daily,
            Rule::Weekly => self.keep_weekly,
            Rule::Monthly => self.keep_monthly,
        }
    }

    /// No rule set: the plan keeps everything.
    pub fn is_empty(&self) -> bool {
        Rule::ALL.iter().all(|r| self.count(*r) == 0)
    }
}

/// What the planner needs to know about a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub unix_ms: u64,
    pub app_consistent: bool,
    /// quiesce can delete its snapshot (see the module's "separation").
    pub deletable: bool,
}

/// One point's fate: kept (and by which rules), or to go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub unix_ms: u64,
    /// Empty: the point goes.
    pub kept_by: Vec<Rule>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.kept_by.is_empty()
    }
}

/// Every point's decision, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// True when the policy sets no rule (everything is kept).
    pub no_policy: bool,
}

impl Plan {
    pub fn kept(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.keep())
    }
    pub fn removed(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| !d.keep())
    }
}

/// Decides for every point. Ties in time are broken by id, so the plan is
/// the same whatever order the catalog listed the points in.
pub fn plan(points: &[Candidate], policy: &Policy) -> Plan {
    let mut order: Vec<&Candidate> = points.iter().collect();
    order.sort_by(|a, b| b.unix_ms.cmp(&a.unix_ms).then_with(|| b.id.cmp(&a.id)));
    let mut decisions: Vec<Decision> =
        order.iter().map(|c| Decision { id: c.id.clone(), unix_ms: c.unix_ms, kept_by: Vec::new() }).collect();
    if policy.is_empty() {
        for d in &mut decisions {
            d.kept_by.push(Rule::Last);
        }
        return Plan { decisions, no_policy: true };
    }
    for (rule, deletable) in Rule::ALL.into_iter().flat_map(|r| [(r, true), (r, false)]) {
        let want = policy.count(rule);
        let app_only = policy.app_consistent_only.contains(&rule);
        let mut kept = 0u32;
        let mut last_period: Option<Option<i64>> = None;
        for (c, d) in order.iter().zip(decisions.iter_mut()) {
            if kept >= want {
                break;
            }
            if c.deletable != deletable || (app_only && !c.app_consistent) {
                continue;
            }
            let period = rule.period(c.unix_ms);
            // Newest first: the first point seen in a period is its most recent.
            if period.is_some() && last_period == Some(period) {
                continue;
            }
            last_period = Some(period);
            d.kept_by.push(rule);
            kept += 1;
        }
    }
    Plan { decisions, no_policy: false }
}

/// A UTC calendar date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// The UTC date and time of a Unix time in ms (Howard Hinnant's
/// `civil_from_days`, exact for the whole range).
pub fn civil(unix_ms: u64) -> Civil {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil { year, month, day, hour: (rem / 3600) as u32, minute: (rem % 3600 / 60) as u32, second: (rem % 60) as u32 }
}

/// `2026-11-30 05:40:12Z`, for humans.
pub fn format_utc(unix_ms: u64) -> String {
    let c = civil(unix_ms);
    format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 24 * HOUR;
    /// 2025-01-01 00:00:00Z, a Wednesday.
    const YEAR_START: u64 = 1_735_689_600_000;

    /// A synthetic year: a point every 6 hours (at 00:30, 06:30, 12:30,
    /// 18:30), where the 06:30 and 18:30 ones are only crash-consistent.
    fn year() -> Vec<Candidate> {
        (0..365 * 4)
            .map(|i| {
                let t = YEAR_START + i * 6 * HOUR + HOUR / 2;
                Candidate { id: format!("q-{}-{i:04}", t / 1000), unix_ms: t, app_consistent: i % 2 == 0, deletable: true }
            })
            .collect()
    }

    fn ids(plan: &Plan, rule: Rule) -> Vec<String> {
        plan.decisions.iter().filter(|d| d.kept_by.contains(&rule)).map(|d| d.id.clone()).collect()
    }

    fn at(points: &[Candidate], id: &str) -> Candidate {
        points.iter().find(|c| c.id == id).cloned().expect("id")
    }

    #[test]
    fn agents_records_do_not_push_deletable_snapshots_out() {
        // The timer's daily snapshots (deletable), then five days of an
        // agent's records every 36 minutes (a busy schedule, or a group
        // member looping begin/end). Ranked together, the agent's records
        // took keep_last and every keep_daily day: all ten timer snapshots
        // would have been pruned.
        let mut points: Vec<Candidate> = (0..10)
            .map(|d| Candidate { id: format!("timer-{d}"), unix_ms: YEAR_START + d * DAY, app_consistent: true, deletable: true })
            .collect();
        let flood = YEAR_START + 10 * DAY;
        points.extend((0..200).map(|i| Candidate {
            id: format!("agent-{i:03}"),
            unix_ms: flood + i * 36 * 60_000,
            app_consistent: true,
            deletable: false,
        }));
        let policy = Policy { keep_last: 3, keep_daily: 5, ..Default::default() };
        let kept: Vec<String> = plan(&points, &policy).kept().map(|d| d.id.clone()).collect();
        // Each kind on its own: the agent's 3 newest and the newest of each of
        // its 5 days; the timer's 3 newest and its 5 newest days.
        let want = ["agent-199", "agent-198", "agent-197", "agent-159", "agent-119", "agent-079", "agent-039"]
            .into_iter()
            .chain(["timer-9", "timer-8", "timer-7", "timer-6", "timer-5"]);
        assert_eq!(kept, want.map(String::from).collect::<Vec<_>>());
    }

    #[test]
    fn civil_dates_are_exact() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_utc(YEAR_START), "2025-01-01 00:00:00Z");
        // 2024 is a leap year: Feb 29 exists; 2100 is not.
        assert_eq!(format_utc(1_709_208_000_000), "2024-02-29 12:00:00Z");
        assert_eq!(format_utc(4_107_542_400_000), "2100-03-01 00:00:00Z");
        assert_eq!(format_utc(1_764_481_212_000), "2025-11-30 05:40:12Z");
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2025-01-05 is a Sunday, 2025-01-06 a Monday.
        let sun = YEAR_START + 4 * DAY + 23 * HOUR;
        let mon = YEAR_START + 5 * DAY;
        assert_eq!(Rule::Weekly.period(sun), Rule::Weekly.period(YEAR_START));
        assert_ne!(Rule::Weekly.period(sun), Rule::Weekly.period(mon));
        assert_eq!(Rule::Weekly.period(mon), Rule::Weekly.period(mon + 6 * DAY + 23 * HOUR));
    }

    #[test]
    fn no_policy_keeps_everything() {
        let points = year();
        let p = plan(&points, &Policy::default());
        assert!(p.no_policy);
        assert_eq!(p.removed().count(), 0);
        assert_eq!(p.kept().count(), points.len());
    }

    #[test]
    fn a_year_of_points_keeps_what_restic_would() {
        let points = year();
        let policy = Policy { keep_last: 3, keep_hourly: 10, keep_daily: 7, keep_weekly: 5, keep_monthly: 12, app_consistent_only: vec![] };
        let p = plan(&points, &policy);
        // Newest first.
        assert!(p.decisions.windows(2).all(|w| w[0].unix_ms >= w[1].unix_ms));
        let newest: Vec<&str> = p.decisions.iter().map(|d| d.id.as_str()).take(12).collect();
        assert_eq!(ids(&p, Rule::Last), newest[..3].to_vec());
        // One point per hour at most: the 10 newest points sit in 10 different hours.
        assert_eq!(ids(&p, Rule::Hourly), newest[..10].to_vec());
        // Daily: the newest point of each of the last 7 days (18:30 each day).
        let daily = ids(&p, Rule::Daily);
        assert_eq!(daily.len(), 7);
        for (n, id) in daily.iter().enumerate() {
            let c = at(&points, id);
            assert_eq!(format_utc(c.unix_ms), format!("2025-12-{:02} 18:30:00Z", 31 - n), "day {n}");
        }
        // Weekly: the newest point of each of the last 5 ISO weeks: the year's
        // last point (Wed Dec 31), then the Sundays Dec 28, 21, 14, 7.
        let weekly: Vec<String> = ids(&p, Rule::Weekly).iter().map(|id| format_utc(at(&points, id).unix_ms)).collect();
        assert_eq!(
            weekly,
            ["2025-12-31 18:30:00Z", "2025-12-28 18:30:00Z", "2025-12-21 18:30:00Z", "2025-12-14 18:30:00Z", "2025-12-07 18:30:00Z"]
        );
        // Monthly: the last point of each month of the year.
        let monthly: Vec<String> = ids(&p, Rule::Monthly).iter().map(|id| format_utc(at(&points, id).unix_ms)).collect();
        let month_ends = [31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 28, 31];
        let expected: Vec<String> = (0..12).map(|i| format!("2025-{:02}-{:02} 18:30:00Z", 12 - i, month_ends[i])).collect();
        assert_eq!(monthly, expected);
        // Rules count on their own: the newest point is kept by all five.
        assert_eq!(p.decisions[0].kept_by, Rule::ALL.to_vec());
        let kept: BTreeSet<String> = p.kept().map(|d| d.id.clone()).collect();
        let union: BTreeSet<String> = Rule::ALL.iter().flat_map(|r| ids(&p, *r)).collect();
        assert_eq!(kept, union);
        // The 10 hourly (covering the 3 last and Dec 31..29 18:30), 4 more
        // days (Dec 28..25), 3 more Sundays (Dec 21, 14, 7), 11 more month ends.
        assert_eq!(kept.len(), 10 + 4 + 3 + 11, "{kept:?}");
        assert_eq!(p.removed().count(), points.len() - kept.len());
    }

    #[test]
    fn app_consistent_only_rules_skip_weaker_points() {
        let points = year();
        let policy = Policy {
            keep_last: 2,
            keep_daily: 3,
            keep_monthly: 2,
            app_consistent_only: vec![Rule::Daily, Rule::Monthly],
            ..Default::default()
        };
        let p = plan(&points, &policy);
        // keep_last keeps the latest of any label: 18:30 (crash) and 12:30 (app).
        let last: Vec<bool> = ids(&p, Rule::Last).iter().map(|id| at(&points, id).app_consistent).collect();
        assert_eq!(last, [false, true]);
        for rule in [Rule::Daily, Rule::Monthly] {
            for id in ids(&p, rule) {
                let c = at(&points, &id);
                assert!(c.app_consistent, "{rule:?} kept a weaker point {id}");
                assert_eq!(format_utc(c.unix_ms)[11..], *"12:30:00Z", "the day's newest AppConsistent point");
            }
        }
        assert_eq!(ids(&p, Rule::Daily).len(), 3);
        assert_eq!(ids(&p, Rule::Monthly).len(), 2);
    }

    #[test]
    fn brute_force_agrees_on_random_histories() {
        // A small LCG: deterministic, no dependency.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            seed >> 33
        };
        for _ in 0..200 {
            let n = next() % 60;
            let mut t = YEAR_START;
            let points: Vec<Candidate> = (0..n)
                .map(|i| {
                    t += next() % (3 * DAY);
                    Candidate { id: format!("p{i:03}"), unix_ms: t, app_consistent: next() % 3 != 0, deletable: true }
                })
                .collect();
            let policy = Policy {
                keep_last: (next() % 4) as u32,
                keep_hourly: (next() % 4) as u32,
                keep_daily: (next() % 6) as u32,
                keep_weekly: (next() % 4) as u32,
                keep_monthly: (next() % 3) as u32,
                app_consistent_only: Rule::ALL.into_iter().filter(|_| next() % 2 == 0).collect(),
            };
            let p = plan(&points, &policy);
            // Brute force: for each rule, group eligible points by period,
            // take each period's newest, keep the newest `count` periods.
            let mut want: BTreeMap<String, Vec<Rule>> = BTreeMap::new();
            if policy.is_empty() {
                continue;
            }
            for rule in Rule::ALL {
                let eligible = points.iter().filter(|c| c.app_consistent || !policy.app_consistent_only.contains(&rule));
                let mut newest: BTreeMap<(i64, usize), &Candidate> = BTreeMap::new();
                for (i, c) in eligible.enumerate() {
                    let key = match rule.period(c.unix_ms) {
                        Some(period) => (period, 0),
                        None => (c.unix_ms as i64, i),
                    };
                    let e = newest.entry(key).or_insert(c);
                    if (c.unix_ms, &c.id) > (e.unix_ms, &e.id) {
                        *e = c;
                    }
                }
                for c in newest.values().rev().take(policy.count(rule) as usize) {
                    want.entry(c.id.clone()).or_default().push(rule);
                }
            }
            let got: BTreeMap<String, Vec<Rule>> = p.kept().map(|d| (d.id.clone(), d.kept_by.clone())).collect();
            assert_eq!(got, want, "{policy:?}");
        }
    }
}
