//! Schedules: when each sync job runs, in the partnership's local time, and the loop that runs them.
//!
//! A [`Schedule`] is a cron expression (5 fields, or 6 with seconds first) read in a time zone (default
//! `Europe/London`). [`croner`] decides which *wall clock* times match the expression; this module decides
//! which *real instants* those wall times are on days when the clocks change, because an admin writing
//! `30 1 * * *` means "once a day at half past one", whatever the clocks do:
//!
//! - **Wall-clock schedules** (the seconds, minute and hour fields are explicit values, lists or ranges,
//!   e.g. `30 1 * * *`, `0 9,17 * * MON-FRI`, `0 1-3 * * *`) fire once per intended local time. A time that
//!   happens twice (01:30 on the last Sunday of October) fires at its first occurrence only (01:30 BST). A
//!   time that never happens (01:30 on the last Sunday of March) fires at the moment the clocks jump
//!   (02:00 BST = 01:00 UTC); several skipped times of one schedule collapse into that one fire.
//! - **Real-time schedules** (any of those fields is a wildcard or a step over one, e.g. `0 * * * *`,
//!   `*/15 * * * *`) fire on every real instant whose local time matches: `0 * * * *` is every real hour
//!   on the hour, 23 fires on the spring-forward day and 25 on the fall-back day (01:00 BST and 01:00 GMT
//!   are different hours); `*/15 * * * *` is every real quarter hour. Local times inside the skipped hour
//!   do not exist, so nothing is due then.
//!
//! This is the rule Vixie cron (and cronie) apply. croner 4 applies the same two rules on its own, but
//! calls a schedule "fixed time" only when each of those fields is a *single* value: `30 1,13 * * *` or
//! `0 1-3 * * *` would be skipped on the spring-forward day and run twice on the fall-back day. This
//! module therefore uses croner only to match wall clock times and maps them to instants itself.
//!
//! A [`Clock`] gives "now" as a wall time that follows tokio's clock, so tests can pause time and run
//! days of schedules in milliseconds. The [`Scheduler`] runs named jobs on their schedules: never a job
//! concurrently with itself, missed fires after an overrun skipped (with a warning) rather than queued,
//! status (last and next run) readable through a [`SchedulerHandle`], and a prompt return on shutdown
//! once running jobs have finished their current unit of work.

mod clock;
mod cron;
mod scheduler;

pub use clock::Clock;
pub use cron::{DEFAULT_TIMEZONE, Schedule, ScheduleKind, deserialize_timezone, parse_timezone};
pub use scheduler::{JobFn, JobFuture, JobStatus, Scheduler, SchedulerHandle, Watchdog};

/// Errors from reading schedules and registering jobs; each names the expression, zone or job at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "schedule \"{expr}\" is not a valid cron expression: {reason}; write 5 fields \
         (minute hour day-of-month month day-of-week, e.g. \"30 1 * * *\") or 6 with seconds first"
    )]
    InvalidExpression { expr: String, reason: String },
    #[error(
        "schedule \"{expr}\" never fires: no date matches it (e.g. 30 February); check the day-of-month \
         and month fields"
    )]
    NeverFires { expr: String },
    #[error("time zone \"{name}\" is not an IANA time zone name; write it like \"Europe/London\"")]
    UnknownTimezone { name: String },
    #[error("job \"{name}\" is already scheduled; give each job a unique name")]
    DuplicateJob { name: String },
}
