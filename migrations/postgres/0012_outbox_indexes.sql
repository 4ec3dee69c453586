-- Fewer outbox indexes a first load has to keep (src/store/outbox.rs). Every index keyed by a resource or a
-- person is written at a random place: each queued row inserted and deleted there cost a page of its own in
-- every commit. Keep in step with migrations/sqlite/0012_outbox_indexes.sql.
--
-- Looking up a key: its pending row through outbox_one_pending, its dead letter through outbox_dead_key (dead
-- letters are few). The index of every row by key goes.
DROP INDEX outbox_by_key;
CREATE INDEX outbox_dead_key ON outbox (destination, resource_type, resource_id) WHERE dead;

-- The lease's per-person order: a row waits while an earlier pending row of the same person is leased or
-- backing off. Only a row that has been leased or has failed can be either, so only those are indexed: a few
-- bundles' worth of rows, instead of every queued row. (A row never leased and never failed is due whatever
-- its not_before says: it holds the time it was planned, and the lease takes such rows in order.)
DROP INDEX outbox_patient;
CREATE INDEX outbox_busy ON outbox (destination, patient, seq)
    WHERE NOT dead AND patient IS NOT NULL AND (lease_until IS NOT NULL OR attempts > 0);
