-- Partner plan receipts (src/sync/receipt.rs). A partner's plan that changed nothing and found nothing for an
-- admin records a receipt: the fingerprint of everything that plan depended on (its export files, the
-- configuration and mappings, the build, the date, and this generation). A later plan whose fingerprint is
-- the same would decide exactly as that one did, so it is not made again. `plan_generation` counts changes to
-- what plans read here (ledger, outbox, consent statements, person index, withholdings, snapshots, rows
-- taken out of quarantine); the triggers below keep it, so a write from any code path or any instance
-- changes it in the same transaction. Hashes only, no personal data. Keep in step with migrations/sqlite/0011_plan_receipt.sql.
CREATE TABLE plan_generation (
    n BIGINT NOT NULL
);
INSERT INTO plan_generation (n) VALUES (0);

CREATE TABLE plan_receipt (
    partner     TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    at          BIGINT NOT NULL,
    summary     TEXT NOT NULL
);

-- One bump per statement that changed a row (a statement that changed none, such as a lease of an empty
-- outbox, bumps nothing). A trigger with transition tables cannot name columns, so any outbox update counts,
-- a lease too (SQLite's leaves leases out): that only makes the next plan a full one.
CREATE FUNCTION plan_generation_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed) THEN
        UPDATE plan_generation SET n = n + 1;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER ledger_plan_generation_insert AFTER INSERT ON ledger REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER ledger_plan_generation_update AFTER UPDATE ON ledger REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER ledger_plan_generation_delete AFTER DELETE ON ledger REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER outbox_plan_generation_insert AFTER INSERT ON outbox REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER outbox_plan_generation_update AFTER UPDATE ON outbox REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER outbox_plan_generation_delete AFTER DELETE ON outbox REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER consent_statements_plan_generation_insert AFTER INSERT ON consent_statements REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER consent_statements_plan_generation_update AFTER UPDATE ON consent_statements REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER consent_statements_plan_generation_delete AFTER DELETE ON consent_statements REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER persons_plan_generation_insert AFTER INSERT ON persons REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER persons_plan_generation_update AFTER UPDATE ON persons REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER persons_plan_generation_delete AFTER DELETE ON persons REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER withheld_plan_generation_insert AFTER INSERT ON withheld REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER withheld_plan_generation_update AFTER UPDATE ON withheld REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER withheld_plan_generation_delete AFTER DELETE ON withheld REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER snapshot_members_plan_generation_insert AFTER INSERT ON snapshot_members REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER snapshot_members_plan_generation_update AFTER UPDATE ON snapshot_members REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
CREATE TRIGGER snapshot_members_plan_generation_delete AFTER DELETE ON snapshot_members REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
-- Quarantine: only a row taken out (replayed, purged) counts; a plan re-quarantining the same row changes
-- nothing that matters to the next plan.
CREATE TRIGGER quarantine_plan_generation_delete AFTER DELETE ON quarantine REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plan_generation_bump();
