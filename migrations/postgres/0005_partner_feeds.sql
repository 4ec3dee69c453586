-- Partner feeds: what each partner's feed last delivered, per resource of the central record (a hash only,
-- never content), so the next run sends only what changed. `feed` is the outbox destination, `feed:<partner>`.
CREATE TABLE feed_items (
    feed          TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT    NOT NULL,
    person        TEXT    NOT NULL,
    content_hash  TEXT    NOT NULL,
    delivered_at  BIGINT  NOT NULL,
    PRIMARY KEY (feed, resource_type, resource_id)
);
CREATE INDEX feed_items_person ON feed_items (feed, person);
