-- The audit trail as a hash chain (src/store/audit.rs): each entry holds the hash of the one before and its
-- own. The head (entries chained, last hash) lives in settings and moves with every append, under its row
-- lock, so appends from several instances are serialised and a deleted last entry or a truncated table is
-- noticed by `connector audit verify`. Entries already written are not chained: the chain starts after them
-- (audit_chain_start). Keep in step with migrations/sqlite/0006.
ALTER TABLE audit ADD COLUMN prev_hash TEXT, ADD COLUMN hash TEXT;
INSERT INTO settings (name, value) VALUES ('audit_chain_head', '0 ');
INSERT INTO settings (name, value) SELECT 'audit_chain_start', COALESCE(MAX(id), 0)::text FROM audit;
-- TRUNCATE does not fire DELETE triggers: refuse it too. (The table's owner can still disable triggers:
-- run the connector as a role that does not own `audit` and has only INSERT and SELECT on it.)
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
