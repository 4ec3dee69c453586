-- A fourth consent decision, 'unreadable': a hold on the person while one of their consent records cannot be read
-- (src/store/consent.rs, UNREADABLE). Keep in step with migrations/postgres/0009. SQLite cannot change a CHECK in
-- place, so the table is rebuilt with the same columns, ids and indexes. (Numbered 0009 to leave 0006-0008 free
-- for migrations written at the same time on other branches.)
CREATE TABLE consent_statements_new (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    person         TEXT    NOT NULL,
    patient        TEXT    NOT NULL,
    partner        TEXT    NOT NULL,
    record_key     TEXT    NOT NULL,                   -- the partner's consent record id
    resource_id    TEXT    NOT NULL,                   -- 'Consent/<our id>' ('' for a hold)
    decision       TEXT    NOT NULL CHECK (decision IN ('given', 'declined', 'withdrawn', 'unreadable')),
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
INSERT INTO consent_statements_new (id, person, patient, partner, record_key, resource_id, decision, effective,
    given_on, withdrawn_on, share_cito, share_pkb, share_partners, restrictions, statement_hash, recorded_at)
SELECT id, person, patient, partner, record_key, resource_id, decision, effective, given_on, withdrawn_on,
    share_cito, share_pkb, share_partners, restrictions, statement_hash, recorded_at
FROM consent_statements;
DROP TABLE consent_statements;
ALTER TABLE consent_statements_new RENAME TO consent_statements;
CREATE INDEX consent_by_record ON consent_statements (partner, record_key, id);
CREATE INDEX consent_by_person ON consent_statements (person, effective, id);
