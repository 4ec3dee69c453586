-- A fourth consent decision, 'unreadable': a hold on the person while one of their consent records cannot be read
-- (src/store/consent.rs, UNREADABLE). Keep in step with migrations/sqlite/0009. (Numbered 0009 to leave 0006-0008
-- free for migrations written at the same time on other branches.)
ALTER TABLE consent_statements DROP CONSTRAINT IF EXISTS consent_statements_decision_check;
ALTER TABLE consent_statements ADD CONSTRAINT consent_statements_decision_check
    CHECK (decision IN ('given', 'declined', 'withdrawn', 'unreadable'));
