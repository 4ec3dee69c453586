-- State store, SQLite flavour. Keep in step with migrations/postgres/0001_state.sql: same tables, columns and
-- meaning; only the types differ (INTEGER 0/1 for booleans). Times are unix milliseconds (UTC).
-- Personal data: outbox.body (the FHIR JSON to send), outbox.last_error (a server's OperationOutcome may
-- quote it) and quarantine.raw_json (the rejected source row). Everything else holds ids and hashes only.

-- What each destination holds of our resources.
CREATE TABLE ledger (
    destination   TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT    NOT NULL,                  -- our deterministic id
    remote_id     TEXT    NOT NULL,                  -- = resource_id unless linked to a pre-existing resource
    version_id    TEXT,                              -- meta.versionId / ETag after our last write
    content_hash  TEXT    NOT NULL,                  -- hex sha256 of what we last sent ('' when linked, never written)
    linked        INTEGER NOT NULL DEFAULT 0 CHECK (linked IN (0, 1)),
    patient       TEXT,                              -- 'Patient/<our id>'
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (destination, resource_type, resource_id)
);
CREATE INDEX ledger_by_patient ON ledger (destination, patient) WHERE patient IS NOT NULL;

-- Planned writes. At most one pending (dead = 0) row per (destination, resource); dead rows wait for an admin.
CREATE TABLE outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT, -- send order; a replaced plan gets a new, higher seq
    destination   TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT    NOT NULL,
    patient       TEXT,                              -- ordering group
    op            TEXT    NOT NULL CHECK (op IN ('upsert', 'delete')),
    content_hash  TEXT    NOT NULL,
    body          TEXT,                              -- FHIR JSON (personal data); NULL for delete
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    INTEGER NOT NULL,
    lease_owner   TEXT,
    lease_until   INTEGER,
    lease_seq     INTEGER,                           -- the seq the current lease was taken under (lease token)
    last_error    TEXT,
    dead          INTEGER NOT NULL DEFAULT 0 CHECK (dead IN (0, 1)),
    created_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX outbox_one_pending ON outbox (destination, resource_type, resource_id) WHERE dead = FALSE;
CREATE INDEX outbox_by_key ON outbox (destination, resource_type, resource_id);
CREATE INDEX outbox_pending ON outbox (destination, seq) WHERE dead = FALSE;
CREATE INDEX outbox_patient ON outbox (destination, patient, seq) WHERE dead = FALSE AND patient IS NOT NULL;
CREATE INDEX outbox_dead ON outbox (destination, seq) WHERE dead = TRUE;
CREATE INDEX outbox_lease_owner ON outbox (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX outbox_lease_seq ON outbox (lease_seq) WHERE lease_seq IS NOT NULL;

-- One row per run of a scheduled job (for `connector status`). detail is a summary without personal data.
CREATE TABLE job_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job         TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    ok          INTEGER CHECK (ok IN (0, 1)),
    detail      TEXT
);
CREATE INDEX job_runs_by_job ON job_runs (job, id);

-- Rows the mapper rejected, kept whole (personal data) until replayed or purged.
CREATE TABLE quarantine (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    partner      TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    file         TEXT    NOT NULL,
    source_row   INTEGER NOT NULL,
    record_key   TEXT,
    reasons_json TEXT    NOT NULL,
    raw_json     TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX quarantine_by_partner ON quarantine (partner, id);
