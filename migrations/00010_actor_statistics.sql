-- +goose Up

-- Functional-dependency statistics over workspace_id and the actor columns,
-- per partition (PostgreSQL keeps extended statistics per table, not for a
-- partitioned parent's partitions). An actor's email or id mostly belongs to
-- one workspace; without these the planner multiplies the selectivities of
-- "workspace_id = W" and "actor_email = E", expects ~50 times too few rows
-- for a frequent actor and answers the first page with a bitmap scan of
-- every match and a sort instead of walking the actor index backwards.
-- Partition maintenance creates the same object with every new partition
-- (app/partitions, createActorStatisticsSQL); this covers those that exist.
-- +goose StatementBegin
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT n.nspname, c.relname
             FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE i.inhparent = 'audit_events'::regclass LOOP
        EXECUTE format('CREATE STATISTICS IF NOT EXISTS %I.%I (dependencies) ON workspace_id, actor_id, actor_email FROM %I.%I',
                       p.nspname, p.relname || '_actor_deps', p.nspname, p.relname);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE
    st record;
BEGIN
    FOR st IN SELECT n.nspname, s.stxname
              FROM pg_statistic_ext s
              JOIN pg_namespace n ON n.oid = s.stxnamespace
              JOIN pg_inherits i ON i.inhrelid = s.stxrelid
              WHERE i.inhparent = 'audit_events'::regclass AND s.stxname LIKE '%\_actor\_deps' LOOP
        EXECUTE format('DROP STATISTICS IF EXISTS %I.%I', st.nspname, st.stxname);
    END LOOP;
END
$$;
-- +goose StatementEnd
