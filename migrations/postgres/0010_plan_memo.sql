-- What planning last made of each mapped resource for a destination (src/plan/memo.rs): the fingerprint of
-- its input (the mapped JSON, its category and labels, the source partner, the destination's profile and the
-- connector's build) and the content hash of the body that input shapes to. A later plan with the same
-- fingerprint knows the hash without shaping the resource again; whether anything is sent is still decided
-- against the ledger and the outbox. Hashes only, no personal data. Keep in step with
-- migrations/sqlite/0010_plan_memo.sql.
CREATE TABLE plan_memo (
    destination   TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    input_hash    TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    PRIMARY KEY (destination, resource_type, resource_id)
);
