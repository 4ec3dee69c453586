-- A row rejected in every cycle is kept once, not once per cycle: rows are told apart by a hash of their
-- content (sha256 of raw_json, computed by the connector). Rows from before this migration keep a placeholder.
DELETE FROM quarantine WHERE id NOT IN (
    SELECT MIN(id) FROM quarantine GROUP BY partner, kind, file, source_row, raw_json
);
ALTER TABLE quarantine ADD COLUMN raw_hash TEXT NOT NULL DEFAULT '';
UPDATE quarantine SET raw_hash = 'legacy-' || id;
CREATE UNIQUE INDEX quarantine_once ON quarantine (partner, kind, file, source_row, raw_hash);
