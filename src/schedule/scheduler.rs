//! [`Scheduler`]: runs named jobs on their [`Schedule`]s until shutdown, and reports their status.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{Clock, Schedule, ScheduleError};

/// The future one run of a job returns.
pub type JobFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Starts one run of a job.
pub type JobFn = Arc<dyn Fn() -> JobFuture + Send + Sync + 'static>;

/// The longest single sleep: the wall clock is read again at least this often, so a step of the system
/// clock (or a resumed suspend) delays a fire by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How many skipped fires are counted one by one after an overrun before the count stops being exact
/// (an every-second job stuck for a day would otherwise count 86,400 of them).
const MAX_SKIPPED_COUNTED: u64 = 10_000;

/// What the scheduler knows about one job, for `connector status` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub name: String,
    /// The expression and its zone, e.g. `30 1 * * * (Europe/London)`.
    pub schedule: String,
    /// Whether a run is in progress.
    pub running: bool,
    /// When the last run started (wall time).
    pub last_run: Option<DateTime<Utc>>,
    /// When the last run finished (wall time).
    pub last_finished: Option<DateTime<Utc>>,
    /// When the next run is due; `None` before the scheduler starts and when the schedule has no more fires.
    pub next_run: Option<DateTime<Utc>>,
    /// Runs started so far.
    pub runs: u64,
    /// Fires skipped because a run was still going when they were due.
    pub skipped: u64,
}

/// A cheap, cloneable view of the scheduler's job status that stays valid while [`Scheduler::run`] runs.
#[derive(Debug, Clone, Default)]
pub struct SchedulerHandle {
    jobs: Arc<Mutex<Vec<JobStatus>>>,
}

impl SchedulerHandle {
    /// Every job's status, in the order the jobs were added.
    pub fn status(&self) -> Vec<JobStatus> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn update(&self, index: usize, change: impl FnOnce(&mut JobStatus)) {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(status) = jobs.get_mut(index) {
            change(status);
        }
    }
}

struct Job {
    name: String,
    schedule: Schedule,
    run: JobFn,
}

/// The systemd watchdog, fed by the scheduler's own loop: a scheduler that stops turning (a blocked runtime,
/// a deadlock) or a job that has been running longer than `stuck_after` stops the pings, and systemd
/// restarts the service after `WatchdogSec`.
#[derive(Clone)]
pub struct Watchdog {
    /// How often to ping (half systemd's `WATCHDOG_USEC`).
    pub every: Duration,
    /// A run this long is stuck.
    pub stuck_after: Duration,
    /// Sends one ping (`WATCHDOG=1`).
    pub ping: Arc<dyn Fn() + Send + Sync>,
}

/// Runs named jobs on their schedules.
///
/// Each job has its own loop: it sleeps until the next fire, runs the job to completion, and only then
/// looks for the next fire, so a job never runs concurrently with itself. Fires that passed while a run
/// was still going are skipped with a warning rather than queued: a sync that overran should not be
/// followed by a burst of catch-up syncs. Different jobs run independently of each other. A job that
/// panics is logged and runs again at its next fire.
#[derive(Default)]
pub struct Scheduler {
    jobs: Vec<Job>,
    handle: SchedulerHandle,
    watchdog: Option<Watchdog>,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job; `job` is called once per run and returns the run's future.
    pub fn add<F, Fut>(&mut self, name: impl Into<String>, schedule: Schedule, job: F) -> Result<(), ScheduleError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let run: JobFn = Arc::new(move || Box::pin(job()) as JobFuture);
        self.add_boxed(name, schedule, run)
    }

    /// [`Scheduler::add`] for a job already in its boxed form.
    pub fn add_boxed(&mut self, name: impl Into<String>, schedule: Schedule, run: JobFn) -> Result<(), ScheduleError> {
        let name = name.into();
        if self.jobs.iter().any(|job| job.name == name) {
            return Err(ScheduleError::DuplicateJob { name });
        }
        self.handle.jobs.lock().unwrap_or_else(PoisonError::into_inner).push(JobStatus {
            name: name.clone(),
            schedule: schedule.to_string(),
            running: false,
            last_run: None,
            last_finished: None,
            next_run: None,
            runs: 0,
            skipped: 0,
        });
        self.jobs.push(Job { name, schedule, run });
        Ok(())
    }

    /// Feeds `watchdog` from the scheduler's loop while it runs (until every job has finished after
    /// shutdown), unless a job is stuck.
    pub fn watchdog(&mut self, watchdog: Watchdog) {
        self.watchdog = Some(watchdog);
    }

    /// A handle for reading job status while the scheduler runs.
    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Every job's status, in the order the jobs were added.
    pub fn status(&self) -> Vec<JobStatus> {
        self.handle.status()
    }

    /// Runs the jobs until `shutdown` turns `true` (or its sender is dropped), then returns once every
    /// job that was running has finished its current run. Fires are due strictly after the clock's time
    /// when `run` starts.
    pub async fn run(self, clock: Clock, shutdown: watch::Receiver<bool>) {
        let mut loops = JoinSet::new();
        for (index, job) in self.jobs.into_iter().enumerate() {
            loops.spawn(job_loop(index, job, clock, shutdown.clone(), self.handle.clone()));
        }
        let mut tick = self.watchdog.as_ref().map(|w| tokio::time::interval(w.every));
        // The job last reported stuck, so the error is logged once per stuck run.
        let mut reported: Option<(String, DateTime<Utc>)> = None;
        loop {
            tokio::select! {
                joined = loops.join_next() => match joined {
                    None => break,
                    Some(Err(e)) => error!(error = %e, "Scheduler job loop failed."),
                    Some(Ok(())) => {}
                },
                _ = async { tick.as_mut()?.tick().await; Some(()) }, if tick.is_some() => {
                    let Some(w) = &self.watchdog else { continue };
                    match stuck(&self.handle, clock.now(), w.stuck_after) {
                        None => (w.ping)(),
                        Some(run) => {
                            if reported.as_ref() != Some(&run) {
                                error!(
                                    job = %run.0,
                                    running_seconds = (clock.now() - run.1).num_seconds(),
                                    "Job has been running longer than [schedule] stuck_after_seconds; no longer feeding the systemd watchdog, so systemd restarts the connector."
                                );
                                reported = Some(run);
                            }
                        }
                    }
                }
            }
        }
        info!("Scheduler stopped.");
    }
}

/// The first job whose current run started more than `limit` ago: its name and start.
fn stuck(handle: &SchedulerHandle, now: DateTime<Utc>, limit: Duration) -> Option<(String, DateTime<Utc>)> {
    let limit = chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
    handle.status().into_iter().find_map(|s| match s.last_run {
        Some(started) if s.running && now - started > limit => Some((s.name, started)),
        _ => None,
    })
}

async fn job_loop(index: usize, job: Job, clock: Clock, mut shutdown: watch::Receiver<bool>, handle: SchedulerHandle) {
    let mut next = job.schedule.next_after(clock.now());
    loop {
        handle.update(index, |s| s.next_run = next);
        let Some(due) = next else {
            info!(job = %job.name, schedule = %job.schedule, "Job has no further runs.");
            // Either outcome means stop: shutdown asked for, or no one left to ask.
            let _ = shutdown.wait_for(|stop| *stop).await;
            return;
        };
        if !sleep_until_due(&clock, due, &mut shutdown).await {
            return;
        }

        let started = clock.now();
        handle.update(index, |s| {
            s.running = true;
            s.last_run = Some(started);
            s.runs += 1;
        });
        debug!(job = %job.name, due = %due, "Job started.");
        // A run of its own task, so a panic in the job is caught here and the schedule goes on.
        let outcome = tokio::spawn((job.run)()).await;
        let finished = clock.now();
        if let Err(e) = outcome {
            error!(job = %job.name, error = %e, "Job failed; it runs again at its next scheduled time.");
        } else {
            debug!(job = %job.name, seconds = (finished - started).num_seconds(), "Job finished.");
        }

        let mut upcoming = job.schedule.next_after(due);
        let mut skipped = 0u64;
        while let Some(fire) = upcoming
            && fire < finished
        {
            skipped += 1;
            upcoming = if skipped < MAX_SKIPPED_COUNTED {
                job.schedule.next_after(fire)
            } else {
                job.schedule.next_after(finished)
            };
        }
        if skipped > 0 {
            warn!(
                job = %job.name,
                skipped,
                next = ?upcoming,
                "Job overran its schedule; skipping the runs it missed."
            );
        }
        handle.update(index, |s| {
            s.running = false;
            s.last_finished = Some(finished);
            s.skipped += skipped;
        });
        next = upcoming;
    }
}

/// Sleeps until the clock reads `due`; `false` if shutdown came first.
async fn sleep_until_due(clock: &Clock, due: DateTime<Utc>, shutdown: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *shutdown.borrow_and_update() {
            return false;
        }
        if clock.now() >= due {
            return true;
        }
        let deadline = clock.deadline(due).min(Instant::now() + MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use chrono::TimeZone;

    use super::*;

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 12, 10, 0, 30).unwrap()
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 12, h, m, s).unwrap()
    }

    type Log = Arc<Mutex<Vec<DateTime<Utc>>>>;

    #[tokio::test(start_paused = true)]
    async fn overrunning_job_skips_missed_fires_and_never_overlaps_itself() {
        let clock = Clock::starting_at(start());
        let log: Log = Arc::default();
        let busy = Arc::new(AtomicBool::new(false));
        let overlapped = Arc::new(AtomicBool::new(false));
        let mut scheduler = Scheduler::new();
        {
            let (log, busy, overlapped) = (log.clone(), busy.clone(), overlapped.clone());
            scheduler
                .add("slow", Schedule::from_str("* * * * *").unwrap(), move || {
                    let (log, busy, overlapped) = (log.clone(), busy.clone(), overlapped.clone());
                    async move {
                        if busy.swap(true, Ordering::SeqCst) {
                            overlapped.store(true, Ordering::SeqCst);
                        }
                        let slow = {
                            let mut runs = log.lock().unwrap();
                            runs.push(clock.now());
                            // The first run takes 150 s and misses the fires at 10:02 and 10:03.
                            runs.len() == 1
                        };
                        if slow {
                            tokio::time::sleep(Duration::from_secs(150)).await;
                        }
                        busy.store(false, Ordering::SeqCst);
                    }
                })
                .unwrap();
        }
        let handle = scheduler.handle();
        let (stop, stopped) = watch::channel(false);
        let runner = tokio::spawn(scheduler.run(clock, stopped));

        tokio::time::sleep_until(clock.deadline(at(10, 5, 30))).await;
        stop.send(true).unwrap();
        runner.await.unwrap();

        assert_eq!(*log.lock().unwrap(), [at(10, 1, 0), at(10, 4, 0), at(10, 5, 0)]);
        assert!(!overlapped.load(Ordering::SeqCst));
        let status = &handle.status()[0];
        assert_eq!(status.runs, 3);
        assert_eq!(status.skipped, 2);
        assert_eq!(status.last_run, Some(at(10, 5, 0)));
        assert_eq!(status.next_run, Some(at(10, 6, 0)));
        assert!(!status.running);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_the_running_job_then_returns_promptly() {
        let clock = Clock::starting_at(start());
        let finished = Arc::new(AtomicBool::new(false));
        let mut scheduler = Scheduler::new();
        let done = finished.clone();
        scheduler
            .add("long", Schedule::from_str("0 * * * *").unwrap(), move || {
                let done = done.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    done.store(true, Ordering::SeqCst);
                }
            })
            .unwrap();
        scheduler.add("idle", Schedule::from_str("0 9 * * *").unwrap(), || async {}).unwrap();
        let handle = scheduler.handle();
        let (stop, stopped) = watch::channel(false);
        let runner = tokio::spawn(scheduler.run(clock, stopped));

        // 11:01, a minute into the 10-minute run that started at 11:00.
        tokio::time::sleep_until(clock.deadline(at(11, 1, 0))).await;
        assert!(handle.status()[0].running);
        assert_eq!(handle.status()[1].next_run, Some(at(9, 0, 0) + chrono::Duration::days(1)));
        stop.send(true).unwrap();
        runner.await.unwrap();

        assert!(finished.load(Ordering::SeqCst), "the running job finished its unit");
        assert_eq!(clock.now(), at(11, 10, 0), "returned as soon as the run finished");
        assert_eq!(handle.status()[0].last_finished, Some(at(11, 10, 0)));
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_shutdown_sender_stops_an_idle_scheduler() {
        let mut scheduler = Scheduler::new();
        scheduler.add("daily", Schedule::from_str("0 9 * * *").unwrap(), || async {}).unwrap();
        let (stop, stopped) = watch::channel(false);
        drop(stop);
        scheduler.run(Clock::starting_at(start()), stopped).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_job_runs_again_at_its_next_fire() {
        let clock = Clock::starting_at(start());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut scheduler = Scheduler::new();
        let counter = calls.clone();
        scheduler
            .add("flaky", Schedule::from_str("*/10 * * * *").unwrap(), move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert!(n != 0, "first run fails");
                }
            })
            .unwrap();
        let handle = scheduler.handle();
        let (stop, stopped) = watch::channel(false);
        let runner = tokio::spawn(scheduler.run(clock, stopped));
        tokio::time::sleep_until(clock.deadline(at(10, 25, 0))).await;
        stop.send(true).unwrap();
        runner.await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(handle.status()[0].last_run, Some(at(10, 20, 0)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_job_stops_the_watchdog_pings() {
        let clock = Clock::starting_at(start());
        let pings = Arc::new(AtomicUsize::new(0));
        let mut scheduler = Scheduler::new();
        // Fires at 10:01 and never finishes.
        scheduler.add("stuck", Schedule::from_str("* * * * *").unwrap(), std::future::pending::<()>).unwrap();
        let counted = pings.clone();
        scheduler.watchdog(Watchdog {
            every: Duration::from_secs(30),
            stuck_after: Duration::from_secs(600),
            ping: Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
        });
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(scheduler.run(clock, stopped));

        // Running, not yet stuck: pinged every 30 s.
        tokio::time::sleep_until(clock.deadline(at(10, 5, 0))).await;
        let early = pings.load(Ordering::SeqCst);
        assert!(early >= 9, "pinged {early} times in the first 4.5 minutes");
        // The run started at 10:01; from 10:11 it is stuck and the pings stop.
        tokio::time::sleep_until(clock.deadline(at(10, 11, 10))).await;
        let at_stuck = pings.load(Ordering::SeqCst);
        tokio::time::sleep_until(clock.deadline(at(10, 30, 0))).await;
        assert_eq!(pings.load(Ordering::SeqCst), at_stuck, "pinged while a job was stuck");
        assert!(at_stuck > early);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_fed_while_jobs_finish_and_stops_with_the_scheduler() {
        let clock = Clock::starting_at(start());
        let pings = Arc::new(AtomicUsize::new(0));
        let mut scheduler = Scheduler::new();
        scheduler
            .add("slow", Schedule::from_str("* * * * *").unwrap(), || tokio::time::sleep(Duration::from_secs(300)))
            .unwrap();
        let counted = pings.clone();
        scheduler.watchdog(Watchdog {
            every: Duration::from_secs(30),
            stuck_after: Duration::from_secs(3600),
            ping: Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
        });
        let (stop, stopped) = watch::channel(false);
        let runner = tokio::spawn(scheduler.run(clock, stopped));
        // The run starts at 10:01 and lasts until 10:06; shutdown at 10:02 waits for it, still pinging.
        tokio::time::sleep_until(clock.deadline(at(10, 2, 0))).await;
        stop.send(true).unwrap();
        let before = pings.load(Ordering::SeqCst);
        runner.await.unwrap();
        let after = pings.load(Ordering::SeqCst);
        assert!(after >= before + 7, "{before} pings before shutdown, {after} after the run finished");
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(pings.load(Ordering::SeqCst), after, "pinged after the scheduler stopped");
    }

    #[test]
    fn job_names_are_unique() {
        let mut scheduler = Scheduler::new();
        let every = || Schedule::from_str("0 * * * *").unwrap();
        scheduler.add("sync", every(), || async {}).unwrap();
        let err = scheduler.add("sync", every(), || async {}).unwrap_err();
        assert_eq!(err, ScheduleError::DuplicateJob { name: "sync".into() });
        assert_eq!(scheduler.status().len(), 1);
        assert_eq!(scheduler.status()[0].schedule, "0 * * * * (Europe/London)");
        assert_eq!(scheduler.status()[0].next_run, None);
    }
}
