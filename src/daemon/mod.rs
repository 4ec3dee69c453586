//! The daemon (`connector run`): runs each partner's ingest, each destination's delivery and pull, and each
//! partner feed on their schedules, under systemd (`Type=notify`: READY, WATCHDOG, STOPPING, RELOADING).
//!
//! - SIGTERM or SIGINT: no new work starts; running jobs finish their current bundle; leases are released;
//!   the process exits 0.
//! - SIGHUP: the configuration and mappings are read again and proved whole (mappings, schedules, state
//!   store, destinations, feeds, the ops listener) while the old configuration keeps running. If they are
//!   good, running jobs finish and the daemon carries on with the new ones; if not, the error is logged and
//!   the old configuration stays.
//! - The systemd watchdog is fed by the scheduler's loop, not a timer of its own: a scheduler that stops
//!   turning, or a job stuck longer than `[schedule] stuck_after_seconds`, stops the pings.
//! - With PostgreSQL, several instances may run: all deliver (rows are leased, never sent twice), and only
//!   the instance holding the scheduler lock ingests and plans.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Mutex, watch};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::model::JobName;
use crate::ops::notify::{notify, watchdog_interval};
use crate::schedule::{Clock, Scheduler, Watchdog};
use crate::store::LeaderGuard;
use crate::sync::Engine;

/// Builds the scheduler for one configuration.
fn scheduler(
    engine: &Arc<Engine>,
    leader: &Arc<Mutex<Option<LeaderGuard>>>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Scheduler> {
    let mut s = Scheduler::new();
    for p in &engine.config.partners {
        let schedule = p.schedule.clone();
        let (engine, leader, id, stop) = (engine.clone(), leader.clone(), p.id.clone(), stop.clone());
        s.add(JobName::Ingest(id.clone()).to_string(), schedule, move || {
            let (engine, leader, id, stop) = (engine.clone(), leader.clone(), id.clone(), stop.clone());
            async move {
                if !lead(&engine, &leader).await {
                    return;
                }
                if let Err(e) = engine.ingest_until(&id, false, &stop).await {
                    error!(partner = %id, error = %e, "Ingest failed.");
                }
            }
        })?;
    }
    for (name, d) in &engine.config.destinations {
        let schedule = d.schedule.clone();
        let (engine_d, name_d, stop_d) = (engine.clone(), name.clone(), stop.clone());
        s.add(JobName::Deliver(name.clone()).to_string(), schedule, move || {
            let (engine, name, stop) = (engine_d.clone(), name_d.clone(), stop_d.clone());
            async move {
                if let Err(e) = engine.deliver(&name, &stop).await {
                    error!(destination = %name, error = %e, "Delivery failed.");
                }
            }
        })?;
        if let Some(pull) = &d.pull_schedule {
            let schedule = pull.clone();
            let (engine, leader, name, stop) = (engine.clone(), leader.clone(), name.clone(), stop.clone());
            s.add(JobName::Pull(name.clone()).to_string(), schedule, move || {
                let (engine, leader, name, stop) = (engine.clone(), leader.clone(), name.clone(), stop.clone());
                async move {
                    if !lead(&engine, &leader).await {
                        return;
                    }
                    if let Err(e) = engine.pull(&name, &stop).await {
                        error!(destination = %name, error = %e, "Pull failed.");
                    }
                }
            })?;
        }
    }
    for f in &engine.config.feeds {
        let schedule = f.schedule.clone();
        crate::feed::check(engine, f)?;
        let (engine, leader, feed, stop) = (engine.clone(), leader.clone(), f.clone(), stop.clone());
        s.add(JobName::Feed(f.partner.clone()).to_string(), schedule, move || {
            let (engine, leader, feed, stop) = (engine.clone(), leader.clone(), feed.clone(), stop.clone());
            async move {
                // Planning reads the central record for each client: one instance at a time.
                if !lead(&engine, &leader).await {
                    return;
                }
                if let Err(e) = crate::feed::run(&engine, &feed, false, &stop).await {
                    error!(feed = %feed.name(), error = %e, "Feed failed.");
                }
            }
        })?;
    }
    Ok(s)
}

/// Whether this instance leads the scheduling (always, on SQLite); takes the lead when it is free.
async fn lead(engine: &Engine, leader: &Mutex<Option<LeaderGuard>>) -> bool {
    let mut guard = leader.lock().await;
    if let Some(g) = guard.as_mut() {
        if g.still_leading().await {
            return true;
        }
        warn!("Lost the scheduler lead; another instance ingests now.");
        *guard = None;
    }
    match engine.store.try_lead("scheduler").await {
        Ok(Some(g)) => {
            info!("Leading the scheduler: this instance ingests and plans.");
            *guard = Some(g);
            true
        }
        Ok(None) => false,
        Err(e) => {
            error!(error = %e, "Cannot check the scheduler lead.");
            false
        }
    }
}

/// Everything one configuration runs with, built whole before anything running is touched: the engine
/// (mappings, state store, destinations, sharing rules), the scheduler with every job, and the ops listener.
struct Generation {
    engine: Arc<Engine>,
    scheduler: Scheduler,
    leader: Arc<Mutex<Option<LeaderGuard>>>,
    stop: watch::Sender<bool>,
    /// The ops listener and the address it was bound to.
    listener: Option<(SocketAddr, Arc<TcpListener>)>,
}

/// Proves a configuration whole: builds its engine, its jobs and its listener. `running` is the listener
/// of the configuration in use, taken over when the address is unchanged (the port cannot be bound twice).
async fn prepare(config: Config, running: Option<&(SocketAddr, Arc<TcpListener>)>) -> anyhow::Result<Generation> {
    let engine = Arc::new(Engine::start(config).await?);
    match finish(&engine, running).await {
        Ok((scheduler, leader, stop, listener)) => Ok(Generation { engine, scheduler, leader, stop, listener }),
        Err(e) => {
            engine.store.close().await;
            Err(e)
        }
    }
}

type Parts = (Scheduler, Arc<Mutex<Option<LeaderGuard>>>, watch::Sender<bool>, Option<(SocketAddr, Arc<TcpListener>)>);

async fn finish(engine: &Arc<Engine>, running: Option<&(SocketAddr, Arc<TcpListener>)>) -> anyhow::Result<Parts> {
    let leader = Arc::new(Mutex::new(None));
    let (stop, stop_rx) = watch::channel(false);
    let mut sched = scheduler(engine, &leader, &stop_rx)?;
    if let Some(every) = watchdog_interval() {
        sched.watchdog(Watchdog {
            every,
            stuck_after: Duration::from_secs(engine.config.schedule.stuck_after_seconds),
            ping: Arc::new(|| {
                notify("WATCHDOG=1");
            }),
        });
    }
    let listener = match engine.config.ops.listen {
        Some(addr) => match running {
            Some((old, l)) if *old == addr => Some((addr, l.clone())),
            _ => {
                let l =
                    TcpListener::bind(addr).await.with_context(|| format!("ops.listen: cannot listen on {addr}"))?;
                Some((addr, Arc::new(l)))
            }
        },
        None => None,
    };
    Ok((sched, leader, stop, listener))
}

/// A configuration at work.
struct Running {
    engine: Arc<Engine>,
    leader: Arc<Mutex<Option<LeaderGuard>>>,
    stop: watch::Sender<bool>,
    listener: Option<(SocketAddr, Arc<TcpListener>)>,
    ops: Option<tokio::task::JoinHandle<()>>,
    scheduler: tokio::task::JoinHandle<()>,
}

fn start(g: Generation) -> Running {
    let ops = g.listener.as_ref().map(|(addr, l)| {
        info!(address = %addr, "Serving /healthz, /readyz and /metrics.");
        let unready = Duration::from_secs(g.engine.config.ops.unready_after_seconds);
        tokio::spawn(crate::ops::http::serve(l.clone(), g.engine.context(), unready))
    });
    let scheduler = tokio::spawn(g.scheduler.run(Clock::system(), g.stop.subscribe()));
    notify("READY=1");
    notify(&format!(
        "STATUS=Running: {} partner(s), {} destination(s)",
        g.engine.config.partners.len(),
        g.engine.destinations.len()
    ));
    info!(partners = g.engine.config.partners.len(), destinations = g.engine.destinations.len(), "Connector running.");
    Running { engine: g.engine, leader: g.leader, stop: g.stop, listener: g.listener, ops, scheduler }
}

/// Stops a configuration: no new runs; running jobs finish their current unit of work; leases are released.
async fn stop(r: Running) {
    let _ = r.stop.send(true);
    if let Some(o) = r.ops {
        o.abort();
        let _ = o.await;
    }
    if let Err(e) = r.scheduler.await {
        error!(error = %e, "The scheduler stopped abnormally.");
    }
    if let Err(e) = r.engine.store.release(&r.engine.owner).await {
        warn!(error = %e, "Could not release outbox leases; they expire on their own.");
    }
    if let Some(g) = r.leader.lock().await.take() {
        let _ = g.release().await;
    }
    r.engine.store.close().await;
}

/// Runs until SIGTERM/SIGINT. Returns the exit code.
///
/// A reload (SIGHUP) reads the configuration and proves it whole (mappings, schedules, state store,
/// destinations, the ops address) while the running one carries on; only then is the running one stopped
/// and the new one started. A configuration that does not prove is logged and the running one stays.
pub async fn run(config_path: &Path) -> anyhow::Result<u8> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let config = Config::load(config_path)?;
    let mut running = start(prepare(config, None).await?);
    loop {
        let next = tokio::select! {
            _ = term.recv() => None,
            _ = int.recv() => None,
            _ = hup.recv() => {
                info!("Reloading the configuration.");
                let proved = match Config::load(config_path) {
                    Ok(c) => prepare(c, running.listener.as_ref()).await,
                    Err(e) => Err(e.into()),
                };
                match proved {
                    Ok(g) => Some(g),
                    Err(e) => {
                        error!(error = %format!("{e:#}").replace('\n', "; "), "Reload refused: the new configuration does not work; carrying on with the old one.");
                        continue;
                    }
                }
            }
        };
        notify(if next.is_some() { "RELOADING=1" } else { "STOPPING=1" });
        info!(reload = next.is_some(), "Finishing running jobs.");
        stop(running).await;
        match next {
            Some(g) => {
                info!("Configuration reloaded.");
                running = start(g);
            }
            None => break,
        }
    }
    info!("Connector stopped.");
    Ok(0)
}
