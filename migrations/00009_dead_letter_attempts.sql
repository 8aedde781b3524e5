-- +goose Up

-- How many times an outbox row has already failed and been set aside: 0 for
-- a new event. A dead letter put back with `auditlog deadletters retry`
-- carries its count here, so failing again makes it attempts + 1 rather
-- than starting over at 1. A constant default: adding the column rewrites
-- nothing, and writers never name it.
ALTER TABLE audit_outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE audit_outbox DROP COLUMN attempts;
