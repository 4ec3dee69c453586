//! Schedules across the UK clock changes of 2026, in Europe/London: the spring-forward day (Sunday 29 March,
//! 01:00 GMT -> 02:00 BST) and the fall-back day (Sunday 25 October, 02:00 BST -> 01:00 GMT), with the days
//! either side. A real [`Scheduler`] runs on a paused tokio clock, so four days pass in milliseconds.
//!
//! What an admin expects, and what is asserted: a daily job runs once on each day (a time in the skipped
//! hour runs when the clocks jump; a time in the repeated hour runs at its first occurrence); an hourly job
//! runs every real hour (23 on the short day, 25 on the long one); a 15-minute job every real 15 minutes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Europe::London;
use tokio::sync::watch;
use york_connector::schedule::{Clock, Schedule, Scheduler};

const DAILY_0130: &str = "daily-01:30";
const DAILY_0900: &str = "daily-09:00";
const HOURLY: &str = "hourly";
const QUARTER: &str = "every-15-minutes";

fn utc(mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, mo, d, h, mi, 0).unwrap()
}

type Fires = BTreeMap<&'static str, Vec<DateTime<Utc>>>;

/// (job name, when it ran), in run order.
type RunLog = Arc<Mutex<Vec<(&'static str, DateTime<Utc>)>>>;

/// Runs the four jobs from `start` until `end` on a paused clock and returns when each ran (UTC).
async fn run_jobs(start: DateTime<Utc>, end: DateTime<Utc>) -> Fires {
    let clock = Clock::starting_at(start);
    let log: RunLog = Arc::default();
    let mut scheduler = Scheduler::new();
    for (name, expr) in
        [(DAILY_0130, "30 1 * * *"), (DAILY_0900, "0 9 * * *"), (HOURLY, "0 * * * *"), (QUARTER, "*/15 * * * *")]
    {
        let log = log.clone();
        let schedule = Schedule::parse(expr, London).unwrap();
        scheduler
            .add(name, schedule, move || {
                let log = log.clone();
                async move {
                    log.lock().unwrap().push((name, clock.now()));
                }
            })
            .unwrap();
    }
    let handle = scheduler.handle();
    let (stop, stopped) = watch::channel(false);
    let runner = tokio::spawn(scheduler.run(clock, stopped));
    tokio::time::sleep_until(clock.deadline(end)).await;
    stop.send(true).unwrap();
    runner.await.unwrap();

    let mut fires = Fires::new();
    for (name, at) in log.lock().unwrap().iter() {
        fires.entry(name).or_default().push(*at);
    }
    // The status handle agrees with what the jobs saw.
    for status in handle.status() {
        let seen = fires.get(status.name.as_str()).map_or(0, Vec::len);
        assert_eq!(status.runs, seen as u64, "{}", status.name);
        assert_eq!(status.skipped, 0, "{}", status.name);
        assert!(status.next_run.is_some_and(|next| next >= end), "{}", status.name);
    }
    fires
}

/// How many fires fall on each London calendar day.
fn per_local_day(fires: &[DateTime<Utc>]) -> BTreeMap<NaiveDate, usize> {
    let mut days = BTreeMap::new();
    for at in fires {
        *days.entry(at.with_timezone(&London).date_naive()).or_insert(0) += 1;
    }
    days
}

fn day(mo: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, mo, d).unwrap()
}

fn assert_evenly_spaced(fires: &[DateTime<Utc>], step: Duration, name: &str) {
    for pair in fires.windows(2) {
        assert_eq!(pair[1] - pair[0], step, "{name}: gap between {} and {}", pair[0], pair[1]);
    }
}

// Days of schedule on a paused clock take a fraction of a second; real sleeping would take days.
#[tokio::test(start_paused = true)]
async fn spring_forward_weekend() {
    // Friday 27 March 22:00 GMT to Monday 30 March 23:50 BST (22:50 UTC), stopping between fires.
    let fires = run_jobs(utc(3, 27, 22, 0), utc(3, 30, 22, 50)).await;

    // 01:30 GMT on Saturday; on Sunday 01:30 never happens, so the job runs when the clocks jump (02:00 BST
    // = 01:00 UTC); on Monday 01:30 BST = 00:30 UTC.
    assert_eq!(fires[DAILY_0130], [utc(3, 28, 1, 30), utc(3, 29, 1, 0), utc(3, 30, 0, 30)]);
    // 09:00 GMT, then 09:00 BST = 08:00 UTC.
    assert_eq!(fires[DAILY_0900], [utc(3, 28, 9, 0), utc(3, 29, 8, 0), utc(3, 30, 8, 0)]);

    let hourly = &fires[HOURLY];
    assert_evenly_spaced(hourly, Duration::hours(1), HOURLY);
    assert_eq!(hourly.first(), Some(&utc(3, 27, 23, 0)));
    assert_eq!(hourly.last(), Some(&utc(3, 30, 22, 0)));
    // Sunday's local hours 00, 02, 03, ... 23: 01:00 GMT and 02:00 BST are one and the same instant.
    let expected_days = BTreeMap::from([(day(3, 27), 1), (day(3, 28), 24), (day(3, 29), 23), (day(3, 30), 24)]);
    assert_eq!(per_local_day(hourly), expected_days);

    let quarter = &fires[QUARTER];
    assert_evenly_spaced(quarter, Duration::minutes(15), QUARTER);
    assert_eq!(quarter.first(), Some(&utc(3, 27, 22, 15)));
    let expected_days = BTreeMap::from([(day(3, 27), 7), (day(3, 28), 96), (day(3, 29), 92), (day(3, 30), 96)]);
    assert_eq!(per_local_day(quarter), expected_days);
}

#[tokio::test(start_paused = true)]
async fn fall_back_weekend() {
    // Saturday 24 October 00:00 BST (Friday 23:00 UTC) to Monday 26 October 23:50 GMT, stopping between fires.
    let fires = run_jobs(utc(10, 23, 23, 0), utc(10, 26, 23, 50)).await;

    // 01:30 BST on Saturday and (first occurrence) Sunday; 01:30 GMT on Monday. Sunday's 01:30 GMT, an hour
    // after the 01:30 BST run, is the same local time again and does not run.
    assert_eq!(fires[DAILY_0130], [utc(10, 24, 0, 30), utc(10, 25, 0, 30), utc(10, 26, 1, 30)]);
    // 09:00 BST = 08:00 UTC on Saturday, 09:00 GMT = 09:00 UTC after the change.
    assert_eq!(fires[DAILY_0900], [utc(10, 24, 8, 0), utc(10, 25, 9, 0), utc(10, 26, 9, 0)]);

    let hourly = &fires[HOURLY];
    assert_evenly_spaced(hourly, Duration::hours(1), HOURLY);
    // 01:00 BST (00:00 UTC) and 01:00 GMT (01:00 UTC) are different real hours: both run.
    assert!(hourly.contains(&utc(10, 25, 0, 0)) && hourly.contains(&utc(10, 25, 1, 0)));
    // Saturday from 01:00 BST: fires are due strictly after the start (00:00 BST).
    let expected_days = BTreeMap::from([(day(10, 24), 23), (day(10, 25), 25), (day(10, 26), 24)]);
    assert_eq!(per_local_day(hourly), expected_days);

    let quarter = &fires[QUARTER];
    assert_evenly_spaced(quarter, Duration::minutes(15), QUARTER);
    let expected_days = BTreeMap::from([(day(10, 24), 95), (day(10, 25), 100), (day(10, 26), 96)]);
    assert_eq!(per_local_day(quarter), expected_days);
}

/// `next_after` alone, step by step across both changes, for the four schedules.
#[test]
fn next_after_across_both_changes() {
    let next = |expr: &str, t: DateTime<Utc>| Schedule::parse(expr, London).unwrap().next_after(t);

    // Spring: clocks jump at 01:00 UTC on 29 March.
    assert_eq!(next("30 1 * * *", utc(3, 28, 1, 30)), Some(utc(3, 29, 1, 0)));
    assert_eq!(next("30 1 * * *", utc(3, 29, 0, 59)), Some(utc(3, 29, 1, 0)));
    assert_eq!(next("30 1 * * *", utc(3, 29, 1, 0)), Some(utc(3, 30, 0, 30)));
    assert_eq!(next("0 9 * * *", utc(3, 28, 9, 0)), Some(utc(3, 29, 8, 0)));
    assert_eq!(next("0 * * * *", utc(3, 29, 0, 0)), Some(utc(3, 29, 1, 0)));
    assert_eq!(next("0 * * * *", utc(3, 29, 1, 0)), Some(utc(3, 29, 2, 0)));
    assert_eq!(next("*/15 * * * *", utc(3, 29, 0, 45)), Some(utc(3, 29, 1, 0)));
    assert_eq!(next("*/15 * * * *", utc(3, 29, 1, 0)), Some(utc(3, 29, 1, 15)));

    // Autumn: clocks go back at 01:00 UTC on 25 October; local 01:00-01:59 happens twice.
    assert_eq!(next("30 1 * * *", utc(10, 24, 0, 30)), Some(utc(10, 25, 0, 30)));
    assert_eq!(next("30 1 * * *", utc(10, 25, 0, 30)), Some(utc(10, 26, 1, 30)));
    assert_eq!(next("30 1 * * *", utc(10, 25, 1, 15)), Some(utc(10, 26, 1, 30)));
    assert_eq!(next("0 9 * * *", utc(10, 24, 8, 0)), Some(utc(10, 25, 9, 0)));
    assert_eq!(next("0 * * * *", utc(10, 25, 0, 0)), Some(utc(10, 25, 1, 0)));
    assert_eq!(next("0 * * * *", utc(10, 25, 1, 0)), Some(utc(10, 25, 2, 0)));
    assert_eq!(next("*/15 * * * *", utc(10, 25, 0, 45)), Some(utc(10, 25, 1, 0)));
    assert_eq!(next("*/15 * * * *", utc(10, 25, 1, 45)), Some(utc(10, 25, 2, 0)));
}
