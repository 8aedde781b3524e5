-- +goose Up

-- The in-app helpdesk (modules/): members, tickets and delayed automations.
-- Every row carries its workspace_id and every query of the modules filters
-- on it, so one workspace never sees or touches another's rows.

-- People of a workspace. A member signs in with a bearer token (mem_...) of
-- which only the SHA-256 is stored. slack_user_id maps Slack interactions to
-- the member; Slack user ids are unique across Slack, so one Slack user is at
-- most one member.
CREATE TABLE members (
    id            uuid        PRIMARY KEY,
    workspace_id  text        NOT NULL,
    email         text        NOT NULL,
    name          text        NOT NULL DEFAULT '',
    role          text        NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'viewer')),
    token_hash    bytea       NOT NULL,
    slack_user_id text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT members_email_unique UNIQUE (workspace_id, email),
    CONSTRAINT members_token_hash_unique UNIQUE (token_hash),
    CONSTRAINT members_slack_user_unique UNIQUE (slack_user_id)
);

-- Support tickets. created_by has no foreign key: a ticket outlives the
-- member who opened it. assignee_id is cleared when the assignee is removed.
CREATE TABLE tickets (
    id           uuid        PRIMARY KEY,
    workspace_id text        NOT NULL,
    subject      text        NOT NULL CHECK (char_length(subject) BETWEEN 1 AND 500),
    body         text        NOT NULL DEFAULT '',
    status       text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'pending', 'closed')),
    priority     text        NOT NULL DEFAULT 'normal' CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    assignee_id  uuid        REFERENCES members (id) ON DELETE SET NULL,
    created_by   uuid,
    external_ref text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    closed_at    timestamptz
);
CREATE INDEX tickets_workspace_idx ON tickets (workspace_id, created_at);
-- An import can carry the ticket's id in the system it came from; importing
-- the same one twice is refused.
CREATE UNIQUE INDEX tickets_external_ref_idx ON tickets (workspace_id, external_ref) WHERE external_ref IS NOT NULL;
-- Serves the ON DELETE SET NULL of assignee_id when a member is removed.
CREATE INDEX tickets_assignee_idx ON tickets (assignee_id) WHERE assignee_id IS NOT NULL;

-- What a member asked to happen later, e.g. "close ticket X in 2 hours".
-- created_by is the member it acts for; no foreign key, so that removing the
-- member leaves the automation to fail visibly rather than vanish.
CREATE TABLE automations (
    id            uuid        PRIMARY KEY,
    workspace_id  text        NOT NULL,
    action        text        NOT NULL CHECK (action IN ('close_ticket')),
    ticket_id     uuid        NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    created_by    uuid        NOT NULL,
    delay_seconds integer     NOT NULL CHECK (delay_seconds >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX automations_workspace_idx ON automations (workspace_id, created_at);
CREATE INDEX automations_ticket_idx ON automations (ticket_id);

-- The job queue behind automations, one job per automation. audit_context is
-- outbox.Capture of the request that scheduled it, restored on every attempt
-- so the job's events name that member. attempt counts attempts started
-- (incremented when claimed); a running job whose locked_until passed was
-- lost with its worker and is claimed again.
CREATE TABLE automation_jobs (
    automation_id uuid        PRIMARY KEY REFERENCES automations (id) ON DELETE CASCADE,
    workspace_id  text        NOT NULL,
    audit_context jsonb       NOT NULL,
    state         text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
    run_at        timestamptz NOT NULL,
    attempt       integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts  integer     NOT NULL CHECK (max_attempts >= 1),
    locked_until  timestamptz,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX automation_jobs_due_idx ON automation_jobs (run_at) WHERE state = 'pending';
CREATE INDEX automation_jobs_lease_idx ON automation_jobs (locked_until) WHERE state = 'running';

-- +goose Down
DROP TABLE automation_jobs;
DROP TABLE automations;
DROP TABLE tickets;
DROP TABLE members;
