-- Partner plan receipts (src/sync/receipt.rs). A partner's plan that changed nothing and found nothing for an
-- admin records a receipt: the fingerprint of everything that plan depended on (its export files, the
-- configuration and mappings, the build, the date, and this generation). A later plan whose fingerprint is
-- the same would decide exactly as that one did, so it is not made again. `plan_generation` counts changes to
-- what plans read here (ledger, outbox, consent statements, person index, withholdings, snapshots, rows
-- taken out of quarantine); the triggers below keep it, so a write from any code path or any instance
-- changes it in the same transaction. Hashes only, no personal data. Keep in step with migrations/postgres/0011_plan_receipt.sql.
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

-- Quarantine: only a row taken out (replayed, purged) counts; a plan re-quarantining the same row changes
-- nothing that matters to the next plan.
CREATE TRIGGER quarantine_plan_generation_delete AFTER DELETE ON quarantine BEGIN UPDATE plan_generation SET n = n + 1; END;

-- One bump per row changed (SQLite has no statement-level triggers); writes that change no row bump nothing,
-- and neither does an outbox row's lease, attempt count, back-off or last error (a plan does not decide by them;
-- a bump per leased row would cost a first load several seconds).
CREATE TRIGGER ledger_plan_generation_insert AFTER INSERT ON ledger BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER ledger_plan_generation_update AFTER UPDATE ON ledger BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER ledger_plan_generation_delete AFTER DELETE ON ledger BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER outbox_plan_generation_insert AFTER INSERT ON outbox BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER outbox_plan_generation_update AFTER UPDATE OF seq, destination, resource_type, resource_id, patient, op, content_hash, body, dead, origin ON outbox BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER outbox_plan_generation_delete AFTER DELETE ON outbox BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER consent_statements_plan_generation_insert AFTER INSERT ON consent_statements BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER consent_statements_plan_generation_update AFTER UPDATE ON consent_statements BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER consent_statements_plan_generation_delete AFTER DELETE ON consent_statements BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER persons_plan_generation_insert AFTER INSERT ON persons BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER persons_plan_generation_update AFTER UPDATE ON persons BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER persons_plan_generation_delete AFTER DELETE ON persons BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER withheld_plan_generation_insert AFTER INSERT ON withheld BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER withheld_plan_generation_update AFTER UPDATE ON withheld BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER withheld_plan_generation_delete AFTER DELETE ON withheld BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER snapshot_members_plan_generation_insert AFTER INSERT ON snapshot_members BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER snapshot_members_plan_generation_update AFTER UPDATE ON snapshot_members BEGIN UPDATE plan_generation SET n = n + 1; END;
CREATE TRIGGER snapshot_members_plan_generation_delete AFTER DELETE ON snapshot_members BEGIN UPDATE plan_generation SET n = n + 1; END;
