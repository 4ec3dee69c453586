-- Conflicts, pull and reconcile. Keep in step with migrations/postgres/0004.
-- Personal data here: conflicts.base_json, source_json and remote_json (three versions of a resource, kept
-- while the conflict is open so an admin can compare them; cleared when it is resolved). The ledger gains
-- hashes only: element fingerprints are salted hashes, never values.

-- What the ledger needs for three-way merges and for reconcile.
ALTER TABLE ledger ADD COLUMN origin TEXT;           -- 'partner|category|nfp|patient' of what was sent
ALTER TABLE ledger ADD COLUMN source_fp TEXT;        -- JSON {element: salted hash} of the partner's version last reflected
ALTER TABLE ledger ADD COLUMN held_hash TEXT;        -- hash of what the destination holds, as last known
ALTER TABLE ledger ADD COLUMN prev_hash TEXT;        -- hash of what the connector wrote before that (a stale copy)
ALTER TABLE ledger ADD COLUMN sent_version TEXT;     -- the version the connector itself last wrote
ALTER TABLE ledger ADD COLUMN remote_edits INTEGER NOT NULL DEFAULT 0 CHECK (remote_edits IN (0, 1));

-- A record changed on both sides. One open conflict per resource and destination.
CREATE TABLE conflicts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    destination    TEXT    NOT NULL,
    resource_type  TEXT    NOT NULL,
    resource_id    TEXT    NOT NULL,
    remote_id      TEXT    NOT NULL,
    patient        TEXT,
    origin         TEXT,
    elements       TEXT    NOT NULL,                 -- JSON list of the elements changed on both sides
    base_version   TEXT,                             -- the version the connector last wrote or accepted
    base_json      TEXT,                             -- that version, read back from the destination (personal data)
    source_hash    TEXT    NOT NULL,
    source_json    TEXT,                             -- the partner's new version (personal data)
    remote_version TEXT,
    remote_json    TEXT,                             -- the destination's current version (personal data)
    status         TEXT    NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    resolution     TEXT,                             -- source | remote | retracted
    resolved_by    TEXT,
    resolved_at    INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE UNIQUE INDEX conflicts_one_open ON conflicts (destination, resource_type, resource_id) WHERE status = 'open';
CREATE INDEX conflicts_by_status ON conflicts (status, id);

-- Installation settings. The fingerprint salt makes element hashes useless for guessing values.
CREATE TABLE settings (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO settings (name, value) VALUES ('fingerprint_salt', lower(hex(randomblob(16))));

-- What reconcile expects each destination to hold (rebuilt by each run; one run at a time).
CREATE TABLE expected (
    destination   TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT    NOT NULL,
    content_hash  TEXT    NOT NULL,
    partner       TEXT    NOT NULL,
    seen          INTEGER NOT NULL DEFAULT 0 CHECK (seen IN (0, 1)),
    PRIMARY KEY (destination, resource_type, resource_id)
);

-- New audit actions: conflict, conflict-resolved, remote-change. SQLite cannot change a CHECK in place:
-- the table is rebuilt (its append-only triggers are dropped first, so dropping the old table deletes nothing
-- through them, and created again after).
DROP TRIGGER audit_append_only_update;
DROP TRIGGER audit_append_only_delete;
CREATE TABLE audit_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    action        TEXT    NOT NULL CHECK (action IN ('disclosed', 'linked', 'withheld', 'cancelled', 'retracted',
                                                     'consent', 'conflict', 'conflict-resolved', 'remote-change')),
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
    consent       TEXT,
    reason        TEXT
);
INSERT INTO audit_new SELECT id, at, action, destination, person, resource_type, resource_id, version_id,
    content_hash, partner, category, agreement, lawful_basis, consent, reason FROM audit;
DROP TABLE audit;
ALTER TABLE audit_new RENAME TO audit;
CREATE INDEX audit_by_person ON audit (person, id);
CREATE INDEX audit_by_destination ON audit (destination, id);
CREATE INDEX audit_by_at ON audit (at);
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
