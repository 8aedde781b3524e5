-- +goose Up

-- Stored audit events are immutable: UPDATE and DELETE of audit_events rows
-- (through the parent or any partition, since row triggers on a partitioned
-- table are cloned to every partition) are refused. Retention removes whole
-- partitions with DROP TABLE, which fires no row trigger. TRUNCATE, DROP and
-- disabling the trigger need ownership of the table: give the application's
-- day-to-day role no such rights and the log cannot be rewritten through it.
-- +goose StatementBegin
CREATE FUNCTION audit_events_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events rows are immutable (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'events expire only when retention drops their partition';
END;
$$;
-- +goose StatementEnd

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_immutable();

-- +goose Down
DROP TRIGGER audit_events_no_update_delete ON audit_events;
DROP FUNCTION audit_events_immutable();
