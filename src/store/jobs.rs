//! Job runs: when each scheduled job last started and finished, and how it went (`connector status`).

use chrono::{DateTime, Utc};

use super::{Inner, Result, Store, StoreError, from_ms, ms};
use crate::model::JobName;

/// The latest run of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub run_id: i64,
    pub job: String,
    pub started_at: DateTime<Utc>,
    /// `None` while running (or when the process died during the run).
    pub finished_at: Option<DateTime<Utc>>,
    pub ok: Option<bool>,
    pub detail: Option<String>,
}

#[derive(sqlx::FromRow)]
struct JobRunDb {
    id: i64,
    job: String,
    started_at: i64,
    finished_at: Option<i64>,
    ok: Option<bool>,
    detail: Option<String>,
}

/// The newest successful run of a job: walks the job's runs backwards through `job_runs_by_job`.
pub(super) const JOB_LAST_SUCCESS: &str =
    "SELECT finished_at FROM job_runs WHERE job = $1 AND ok = TRUE ORDER BY id DESC LIMIT 1";

impl Store {
    // -----------------------------------------------------------------------------------------------------
    // Jobs

    /// Records the start of a run of `job`; returns its run id for [`Store::job_finished`].
    pub async fn job_started(&self, job: &JobName, now: DateTime<Utc>) -> Result<i64> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("INSERT INTO job_runs (job, started_at) VALUES ($1, $2) RETURNING id")
                .bind(job.to_string())
                .bind(ms(now))
                .fetch_one(pool)
                .await
        })
        .map_err(StoreError::query("job_started"))
    }

    /// Records the end of a run. `detail` is a short summary for `connector status`: no personal data.
    pub async fn job_finished(&self, run_id: i64, ok: bool, detail: &str, now: DateTime<Utc>) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("UPDATE job_runs SET finished_at = $2, ok = $3, detail = $4 WHERE id = $1")
                .bind(run_id)
                .bind(ms(now))
                .bind(ok)
                .bind(detail)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(StoreError::query("job_finished"))?;
        Ok(())
    }

    /// When `job` last finished a run that went well; `None` if it never has. Walks the job's runs from the
    /// newest (index `job_runs_by_job`), so it stays quick however long the history grows.
    pub async fn job_last_success(&self, job: &JobName) -> Result<Option<DateTime<Utc>>> {
        let at: Option<Option<i64>> = with_pool!(self, |pool| {
            sqlx::query_scalar(JOB_LAST_SUCCESS).bind(job.to_string()).fetch_optional(pool).await
        })
        .map_err(StoreError::query("job_last_success"))?;
        at.flatten().map(|v| from_ms("job_runs.finished_at", v)).transpose()
    }

    /// The latest run of each job, by job name.
    pub async fn last_runs(&self) -> Result<Vec<JobRun>> {
        let rows: Vec<JobRunDb> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, job, started_at, finished_at, ok, detail FROM job_runs \
                 WHERE id IN (SELECT MAX(id) FROM job_runs GROUP BY job) ORDER BY job",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("last_runs"))?;
        rows.into_iter()
            .map(|r| {
                Ok(JobRun {
                    run_id: r.id,
                    job: r.job,
                    started_at: from_ms("job_runs.started_at", r.started_at)?,
                    finished_at: r.finished_at.map(|v| from_ms("job_runs.finished_at", v)).transpose()?,
                    ok: r.ok,
                    detail: r.detail,
                })
            })
            .collect()
    }
}
