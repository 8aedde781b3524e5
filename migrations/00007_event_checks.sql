-- +goose Up

-- The write path (outbox normalisation) already guarantees these shapes;
-- stating them in the store makes them hold for any row, including one an
-- operator edits in audit_dead_letters before retrying it. The export
-- relies on them: columns that cannot start with a spreadsheet formula
-- trigger (= + - @ tab CR LF) skip the per-cell CSV guard.
ALTER TABLE audit_events
    ADD CONSTRAINT audit_events_actor_type_check
        CHECK (actor_type IN ('user', 'api_key', 'service', 'system')),
    ADD CONSTRAINT audit_events_source_check
        CHECK (source ~ '^[a-z0-9_]{1,32}$'),
    ADD CONSTRAINT audit_events_resource_ids_flat_check
        CHECK (resource_ids_flat = '' OR resource_ids_flat ~ '^[a-z0-9_]'),
    ADD CONSTRAINT audit_events_details_check
        CHECK (details IS NULL OR left(details, 1) = '{');

-- +goose Down
ALTER TABLE audit_events
    DROP CONSTRAINT audit_events_actor_type_check,
    DROP CONSTRAINT audit_events_source_check,
    DROP CONSTRAINT audit_events_resource_ids_flat_check,
    DROP CONSTRAINT audit_events_details_check;
