-- +goose Up

-- An export in progress. Written (and advisory-locked by the exporting
-- session) before the first byte is streamed, removed in the same
-- transaction that records its audit_log.export event. An intent whose lock
-- is free belongs to an export whose process or database connection died:
-- the sweeper records it as incomplete, so no export goes unrecorded.
CREATE TABLE audit_export_intents (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    payload    text        NOT NULL -- JSON: workspace, actor, request info, filters
);

-- +goose Down
DROP TABLE audit_export_intents;
