-- Partner sources (src/source/): inbox files read, API cursors, snapshot membership, and consent dated when
-- first seen. Keep in step with migrations/sqlite/0009_sources.sql.

-- Every inbox file the connector has finished with, so a restart never reads one again (matched by content
-- hash as well as by name: a file re-uploaded under a new name is still the same export).
CREATE TABLE source_files (
    partner     TEXT    NOT NULL,
    source      TEXT    NOT NULL,                      -- the source's kinds, e.g. 'person+consent'
    name        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    size        BIGINT NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('archived', 'rejected')),
    reason      TEXT,                                  -- why it was rejected
    finished_at BIGINT NOT NULL,                      -- unix milliseconds
    PRIMARY KEY (partner, source, sha256)
);
CREATE INDEX source_files_by_name ON source_files (partner, source, name);

-- Where an API source's incremental read resumes (the value sent as its since parameter).
CREATE TABLE source_cursors (
    partner    TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (partner, source)
);

-- The records of each source's last complete snapshot, to tell what has gone at source since.
CREATE TABLE snapshot_members (
    partner TEXT NOT NULL,
    source  TEXT NOT NULL,
    key     TEXT NOT NULL,                             -- 'Type/id' of a mapped resource
    PRIMARY KEY (partner, source, key)
);

-- Each source's freshness: its newest file (or page) and when it was last read through.
CREATE TABLE source_status (
    partner         TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    last_file       TEXT,
    last_file_mtime BIGINT,                           -- unix milliseconds
    last_success_at BIGINT,                           -- unix milliseconds
    snapshot_size   BIGINT,                           -- records in the last complete snapshot
    gone            BIGINT NOT NULL DEFAULT 0,        -- records gone at source in the last snapshot
    refused         TEXT,                              -- why the last snapshot was refused, if it was
    consent_unreadable TEXT,                           -- a consent export from it that could not be read, until
                                                       -- one is read cleanly: the partner's data is held
    PRIMARY KEY (partner, source)
);

-- How a consent statement's date was found: 'export' (the record's own date) or 'first_seen' (the record has no
-- date; the connector dated the answer when it first read it).
ALTER TABLE consent_statements ADD COLUMN dated TEXT NOT NULL DEFAULT 'export' CHECK (dated IN ('export', 'first_seen'));
