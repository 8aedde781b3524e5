-- +goose Up

-- Tamper evidence (README "Integrity"). Every event stored by the relay
-- carries
--
--     hash = SHA-256(prev_hash || canonical bytes of the event)
--
-- chained per workspace in seq order: prev_hash is the hash of the
-- workspace's previous event, or 32 zero bytes for its first. The canonical
-- bytes are the UTF-8 of the RFC 8785 form of the event as the API returns
-- it (contract §1, every key present, null when absent), without seq, hash
-- and prev_hash. Rows stored before this migration have no hash and are
-- outside the chain.
ALTER TABLE audit_events
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash      bytea;

-- The last link of each workspace's chain. Written only by the relay, in
-- the move that stores the event, under the audit_seq lock.
CREATE TABLE audit_chain_heads (
    workspace_id text   PRIMARY KEY,
    seq          bigint NOT NULL,
    hash         bytea  NOT NULL
);

-- Signed statements of a workspace's chain head (seq, hash) at a time.
-- kind 'prune' checkpoints also carry the bridges over the links retention
-- removed: each says the chain ran from from_hash to to_hash through
-- events first_seq..last_seq that were dropped with their partition.
-- key_id and signature are NULL when no signing key is configured.
CREATE TABLE audit_checkpoints (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id text        NOT NULL,
    seq          bigint      NOT NULL,
    hash         bytea       NOT NULL,
    created_at   timestamptz NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('scheduled', 'manual', 'prune')),
    bridges      text        NOT NULL DEFAULT '[]', -- RFC 8785 JSON array
    key_id       text,
    signature    bytea
);
CREATE INDEX audit_checkpoints_workspace_idx ON audit_checkpoints (workspace_id, id);

-- Checkpoints are statements made once: like audit_events, their rows
-- cannot be updated or deleted through the application's role.
-- +goose StatementBegin
CREATE FUNCTION audit_checkpoints_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_checkpoints rows are immutable (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd

CREATE TRIGGER audit_checkpoints_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_immutable();

-- audit_event_canonical renders one stored event as the RFC 8785 JSON the
-- chain hashes, for the ndjson export (the relay computes the same bytes in
-- Go: integrity.AppendEventBytes). Keys are ASCII, so RFC 8785's UTF-16 key
-- order is the byte order written out here; to_json escapes strings exactly
-- as RFC 8785 does (\" \\ \b \f \n \r \t, other controls as \u00xx);
-- details and resource_ids are stored canonical already. Tests compare it
-- with the API's rendering and with the relay's hashes for random events.
-- +goose StatementBegin
CREATE FUNCTION audit_event_canonical(
    p_id uuid, p_workspace_id text, p_occurred_at timestamptz, p_recorded_at timestamptz,
    p_action text, p_actor_type text, p_actor_id text, p_actor_email text, p_actor_name text,
    p_resource_type text, p_resource_ids text, p_source text, p_ip inet,
    p_user_agent text, p_request_id text, p_details text)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT '{"action":' || to_json(p_action)::text
    || ',"actor":{"email":' || coalesce(to_json(p_actor_email)::text, 'null')
    || ',"id":' || coalesce(to_json(p_actor_id)::text, 'null')
    || ',"name":' || coalesce(to_json(p_actor_name)::text, 'null')
    || ',"type":' || to_json(p_actor_type)::text
    || '},"details":' || coalesce(p_details, 'null')
    || ',"id":"' || p_id::text
    || '","ip":' || coalesce('"' || host(p_ip) || '"', 'null')
    || ',"occurred_at":"' || to_char(p_occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
    || '","recorded_at":"' || to_char(p_recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
    || '","request_id":' || coalesce(to_json(p_request_id)::text, 'null')
    || ',"resource":{"ids":' || coalesce(p_resource_ids, 'null')
    || ',"type":' || coalesce(to_json(p_resource_type)::text, 'null')
    || '},"source":' || to_json(p_source)::text
    || ',"user_agent":' || coalesce(to_json(p_user_agent)::text, 'null')
    || ',"workspace_id":' || to_json(p_workspace_id)::text
    || '}'
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION audit_event_canonical(uuid, text, timestamptz, timestamptz, text, text, text, text, text, text, text, text, inet, text, text, text);
DROP TABLE audit_checkpoints;
DROP FUNCTION audit_checkpoints_immutable();
DROP TABLE audit_chain_heads;
ALTER TABLE audit_events DROP COLUMN hash, DROP COLUMN prev_hash;
