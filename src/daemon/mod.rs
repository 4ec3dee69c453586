//! The daemon (`connector run`): runs each partner's ingest, each destination's delivery and pull, and each
//! partner feed on their schedules, under systemd (`Type=notify`: READY, WATCHDOG, STOPPING, RELOADING).
//!
//! - SIGTERM or SIGINT: no new work starts; running jobs finish their current bundle; leases are released;
//!   the process exits 0.
//! - SIGHUP: the configuration and mappings are read again. If they are good, running jobs finish and the
//!   daemon carries on with the new ones; if not, the error is logged and the old configuration stays.
//! - With PostgreSQL, several instances may run: all deliver (rows are leased, never sent twice), and only
//!   the instance holding the scheduler lock ingests and plans.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Mutex, watch};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::ops::notify::{notify, watchdog_interval};
use crate::schedule::{Clock, Schedule, Scheduler};
use crate::store::LeaderGuard;
use crate::sync::Engine;

/// Builds the scheduler for one configuration.
fn scheduler(
    engine: &Arc<Engine>,
    leader: &Arc<Mutex<Option<LeaderGuard>>>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Scheduler> {
    let tz = engine.config.timezone();
    let mut s = Scheduler::new();
    for p in &engine.config.partners {
        let schedule = Schedule::parse(&p.schedule, tz).with_context(|| format!("partner {}: schedule", p.id))?;
        let (engine, leader, id) = (engine.clone(), leader.clone(), p.id.clone());
        s.add(format!("ingest:{id}"), schedule, move || {
            let (engine, leader, id) = (engine.clone(), leader.clone(), id.clone());
            async move {
                if !lead(&engine, &leader).await {
                    return;
                }
                if let Err(e) = engine.ingest(&id, false).await {
                    error!(partner = %id, error = %e, "Ingest failed.");
                }
            }
        })?;
    }
    for (name, d) in &engine.config.destinations {
        let schedule = Schedule::parse(&d.schedule, tz).with_context(|| format!("destination {name}: schedule"))?;
        let (engine_d, name_d, stop) = (engine.clone(), name.clone(), stop.clone());
        s.add(format!("deliver:{name}"), schedule, move || {
            let (engine, name, stop) = (engine_d.clone(), name_d.clone(), stop.clone());
            async move {
                if let Err(e) = engine.deliver(&name, &stop).await {
                    error!(destination = %name, error = %e, "Delivery failed.");
                }
            }
        })?;
        if let Some(pull) = &d.pull_schedule {
            let schedule = Schedule::parse(pull, tz).with_context(|| format!("destination {name}: pull_schedule"))?;
            let (engine, leader, name) = (engine.clone(), leader.clone(), name.clone());
            s.add(format!("pull:{name}"), schedule, move || {
                let (engine, leader, name) = (engine.clone(), leader.clone(), name.clone());
                async move {
                    if !lead(&engine, &leader).await {
                        return;
                    }
                    if let Err(e) = engine.pull(&name).await {
                        error!(destination = %name, error = %e, "Pull failed.");
                    }
                }
            })?;
        }
    }
    for f in &engine.config.feeds {
        let schedule = Schedule::parse(&f.schedule, tz).with_context(|| format!("feed for {}: schedule", f.partner))?;
        crate::feed::check(engine, f)?;
        let (engine, leader, feed, stop) = (engine.clone(), leader.clone(), f.clone(), stop.clone());
        s.add(f.name(), schedule, move || {
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

/// Runs until SIGTERM/SIGINT. Returns the exit code.
pub async fn run(config_path: &Path) -> anyhow::Result<u8> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut config = Config::load(config_path)?;
    let watchdog = watchdog_interval().map(|every| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notify("WATCHDOG=1");
            }
        })
    });
    let result = loop {
        let engine = Arc::new(Engine::start(config).await?);
        let ops = match &engine.config.ops.listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("ops.listen: cannot listen on {addr}"))?;
                info!(address = %addr, "Serving /healthz, /readyz and /metrics.");
                let unready = std::time::Duration::from_secs(engine.config.ops.unready_after_seconds);
                Some(tokio::spawn(crate::ops::http::serve(listener, engine.clone(), unready)))
            }
            None => None,
        };
        let leader = Arc::new(Mutex::new(None));
        let (stop_tx, stop_rx) = watch::channel(false);
        let sched = scheduler(&engine, &leader, &stop_rx)?;
        let task = tokio::spawn(sched.run(Clock::system(), stop_rx.clone()));
        notify("READY=1");
        notify(&format!(
            "STATUS=Running: {} partner(s), {} destination(s)",
            engine.config.partners.len(),
            engine.destinations.len()
        ));
        info!(partners = engine.config.partners.len(), destinations = engine.destinations.len(), "Connector running.");

        let next = loop {
            tokio::select! {
                _ = term.recv() => break None,
                _ = int.recv() => break None,
                _ = hup.recv() => match Config::load(config_path) {
                    Ok(c) => break Some(c),
                    Err(e) => error!(error = %e, "Reload refused: the new configuration is not valid; carrying on with the old one."),
                },
            }
        };
        notify(if next.is_some() { "RELOADING=1" } else { "STOPPING=1" });
        info!(reload = next.is_some(), "Finishing running jobs.");
        let _ = stop_tx.send(true);
        if let Some(o) = ops {
            // Let go of the port, so a reloaded configuration can listen on it again.
            o.abort();
            let _ = o.await;
        }
        if let Err(e) = task.await {
            error!(error = %e, "The scheduler stopped abnormally.");
        }
        if let Err(e) = engine.store.release(&engine.owner).await {
            warn!(error = %e, "Could not release outbox leases; they expire on their own.");
        }
        if let Some(g) = leader.lock().await.take() {
            let _ = g.release().await;
        }
        engine.store.close().await;
        match next {
            Some(c) => {
                info!("Configuration reloaded.");
                config = c;
            }
            None => break Ok(0),
        }
    };
    if let Some(w) = watchdog {
        w.abort();
    }
    info!("Connector stopped.");
    result
}
