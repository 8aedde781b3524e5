-- +goose Up

-- The transactional outbox. Rows are written in the caller's own transaction
-- and deleted by the relay when moved, so the table is small but high-churn:
-- aggressive per-table autovacuum keeps dead tuples from piling up.
CREATE TABLE audit_outbox (
    pos               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                uuid        NOT NULL,
    workspace_id      text        NOT NULL,
    occurred_at       timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL,
    action            text        NOT NULL,
    actor_type        text        NOT NULL,
    actor_id          text,
    actor_email       text,
    actor_name        text,
    resource_type     text,
    resource_ids      text,       -- RFC 8785 JSON object, or NULL
    resource_ids_flat text        NOT NULL DEFAULT '',
    source            text        NOT NULL,
    ip                inet,
    user_agent        text,
    request_id        text,
    details           text        -- RFC 8785 JSON object, or NULL
) WITH (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);

-- The store. Partitioned by occurred_at; partitions are created by the
-- partition maintenance (and on demand by the relay). The primary key is the
-- idempotency key and must include the partition key.
CREATE TABLE audit_events (
    seq               bigint      NOT NULL,
    id                uuid        NOT NULL,
    workspace_id      text        NOT NULL,
    occurred_at       timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL,
    action            text        COLLATE "C" NOT NULL,
    actor_type        text        NOT NULL,
    actor_id          text        COLLATE "C",
    actor_email       text        COLLATE "C",
    actor_name        text,
    resource_type     text        COLLATE "C",
    resource_ids      text,
    resource_ids_flat text        NOT NULL DEFAULT '',
    source            text        COLLATE "C" NOT NULL,
    ip                inet,
    user_agent        text,
    request_id        text,
    details           text,
    PRIMARY KEY (workspace_id, occurred_at, id)
) PARTITION BY RANGE (occurred_at);

-- One index per filter of GET /v1/events, each ending in the sort key so a
-- filtered page is an ordered index range scan.
CREATE INDEX audit_events_actor_email_idx   ON audit_events (workspace_id, actor_email, occurred_at, id) WHERE actor_email IS NOT NULL;
CREATE INDEX audit_events_actor_id_idx      ON audit_events (workspace_id, actor_id, occurred_at, id) WHERE actor_id IS NOT NULL;
CREATE INDEX audit_events_action_idx        ON audit_events (workspace_id, action, occurred_at, id);
CREATE INDEX audit_events_resource_type_idx ON audit_events (workspace_id, resource_type, occurred_at, id) WHERE resource_type IS NOT NULL;
CREATE INDEX audit_events_source_idx        ON audit_events (workspace_id, source, occurred_at, id);

-- The relay's commit-order counter: one row, updated (and so locked) by each
-- move transaction until it commits, which makes seq strictly increasing in
-- commit order across any number of relays.
CREATE TABLE audit_seq (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_seq  bigint  NOT NULL
);
INSERT INTO audit_seq (singleton, last_seq) VALUES (true, 0);

-- Rows the relay could not move, set aside with the reason so they never
-- stall the rest. Retried by hand (auditlog deadletters retry).
CREATE TABLE audit_dead_letters (
    pos               bigint      PRIMARY KEY,
    failed_at         timestamptz NOT NULL DEFAULT now(),
    error             text        NOT NULL,
    attempts          integer     NOT NULL DEFAULT 1,
    id                uuid        NOT NULL,
    workspace_id      text        NOT NULL,
    occurred_at       timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL,
    action            text        NOT NULL,
    actor_type        text        NOT NULL,
    actor_id          text,
    actor_email       text,
    actor_name        text,
    resource_type     text,
    resource_ids      text,
    resource_ids_flat text        NOT NULL DEFAULT '',
    source            text        NOT NULL,
    ip                inet,
    user_agent        text,
    request_id        text,
    details           text
);

-- API keys: one workspace each; only a SHA-256 of the secret is stored.
CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    workspace_id text        NOT NULL,
    name         text        NOT NULL DEFAULT '',
    scopes       text[]      NOT NULL,
    secret_hash  bytea       NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_workspace_idx ON api_keys (workspace_id);

-- Process-wide settings shared by every instance (e.g. the cursor signing key).
CREATE TABLE auditlog_settings (
    name  text  PRIMARY KEY,
    value bytea NOT NULL
);

-- +goose Down
DROP TABLE auditlog_settings;
DROP TABLE api_keys;
DROP TABLE audit_dead_letters;
DROP TABLE audit_seq;
DROP TABLE audit_events;
DROP TABLE audit_outbox;
