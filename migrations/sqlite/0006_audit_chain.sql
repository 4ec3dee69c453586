-- The audit trail as a hash chain (src/store/audit.rs): each entry holds the hash of the one before and its
-- own. The head (entries chained, last hash) lives in settings and moves with every append, so a deleted
-- last entry or an emptied table is noticed by `connector audit verify`. Entries already written are not
-- chained: the chain starts after them (audit_chain_start). Keep in step with migrations/postgres/0006.
-- SQLite has no TRUNCATE: `DELETE FROM audit` fires the append-only delete trigger.
ALTER TABLE audit ADD COLUMN prev_hash TEXT;
ALTER TABLE audit ADD COLUMN hash TEXT;
INSERT INTO settings (name, value) VALUES ('audit_chain_head', '0 ');
INSERT INTO settings (name, value) SELECT 'audit_chain_start', CAST(COALESCE(MAX(id), 0) AS TEXT) FROM audit;
