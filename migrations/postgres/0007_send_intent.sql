-- Writes in flight (src/store/intent.rs): recorded before a write is sent, removed in the transaction that
-- records it as delivered. One left behind, once no worker holds a lease on its key, means the connector
-- stopped, or lost the answer, after sending: the next delivery pass reads the destination and, when it
-- holds what was sent, audits the disclosure and records it in the ledger then. Hashes and ids only, never
-- content. Keep in step with the other backend.
CREATE TABLE send_intent (
    destination   TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT    NOT NULL,
    held_hash     TEXT    NOT NULL,
    remote_id     TEXT    NOT NULL,
    patient       TEXT,
    origin        TEXT,
    content_hash  TEXT    NOT NULL,
    agreement     TEXT,
    lawful_basis  TEXT,
    consent       TEXT,
    since         BIGINT  NOT NULL,
    PRIMARY KEY (destination, resource_type, resource_id, held_hash)
);
