-- Consent, information sharing decisions and the audit trail. Keep in step with migrations/postgres/0003.
-- Personal data here: consent dates and decisions (about a person, identified by ids only). No names, NHS
-- numbers or free text: people are known by our deterministic ids (a UUID v5 of the NHS number for a person).

-- Which person each of our Patient resources is (one person may have a Patient from several partners).
CREATE TABLE persons (
    patient     TEXT    NOT NULL PRIMARY KEY,          -- 'Patient/<our id>'
    person      TEXT    NOT NULL,                      -- 'Person/<uuid5 of NHS number>', or = patient without one
    partner     TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX persons_by_person ON persons (person);

-- Consent statements as partners' consent records made them. History: a changed record adds a statement.
CREATE TABLE consent_statements (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    person         TEXT    NOT NULL,
    patient        TEXT    NOT NULL,
    partner        TEXT    NOT NULL,
    record_key     TEXT    NOT NULL,                   -- the partner's consent record id
    resource_id    TEXT    NOT NULL,                   -- 'Consent/<our id>'
    decision       TEXT    NOT NULL CHECK (decision IN ('given', 'declined', 'withdrawn')),
    effective      TEXT    NOT NULL,                   -- ISO date the statement takes effect
    given_on       TEXT    NOT NULL,
    withdrawn_on   TEXT,
    share_cito     INTEGER NOT NULL CHECK (share_cito IN (0, 1)),
    share_pkb      INTEGER NOT NULL CHECK (share_pkb IN (0, 1)),
    share_partners TEXT    NOT NULL,                   -- JSON list of partner names as the record gives them
    restrictions   TEXT    NOT NULL,                   -- JSON list of restriction codes
    statement_hash TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL
);
-- A record's versions, newest last: a changed record adds a statement; only its newest version counts.
CREATE INDEX consent_by_record ON consent_statements (partner, record_key, id);
CREATE INDEX consent_by_person ON consent_statements (person, effective, id);

-- What the rules currently keep from each destination, so a withholding is audited once, not every cycle.
CREATE TABLE withheld (
    destination   TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    since         INTEGER NOT NULL,
    PRIMARY KEY (destination, resource_type, resource_id)
);

-- Every decision: disclosures, withholdings, cancellations, retractions. Append-only (triggers refuse changes).
CREATE TABLE audit (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    action        TEXT    NOT NULL CHECK (action IN ('disclosed', 'linked', 'withheld', 'cancelled', 'retracted', 'consent')),
    destination   TEXT,
    person        TEXT,
    resource_type TEXT,
    resource_id   TEXT,
    version_id    TEXT,
    content_hash  TEXT,
    partner       TEXT,
    category      TEXT,
    agreement     TEXT,
    lawful_basis  TEXT,
    consent       TEXT,                                -- the consent statement relied on, e.g. 'hub/CN-701#12'
    reason        TEXT
);
CREATE INDEX audit_by_person ON audit (person, id);
CREATE INDEX audit_by_destination ON audit (destination, id);
CREATE INDEX audit_by_at ON audit (at);
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;

-- Where an outbox row came from, for the policy check made again just before sending:
-- 'partner|category|nfp' (nfp: 1 when marked not-for-the-patient). NULL for rows planned before this migration.
ALTER TABLE outbox ADD COLUMN origin TEXT;

-- Positions in streams the connector reads or copies, e.g. how far the audit trail has been copied to FHIR.
CREATE TABLE cursors (
    name  TEXT   NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
);
