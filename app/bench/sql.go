package bench

// SQL run by the bench. Database and table names come from this package,
// never from the user; the scratch database name is random hex and is
// quoted with pgx.Identifier.

const (
	fmtCreateDatabase = `CREATE DATABASE %s TEMPLATE template0 ENCODING 'UTF8'`
	fmtDropDatabase   = `DROP DATABASE IF EXISTS %s WITH (FORCE)`

	serverVersionSQL = `SELECT current_setting('server_version')`
	settingsSQL      = `SELECT current_setting('shared_buffers'), current_setting('synchronous_commit'),
       current_setting('max_wal_size'), current_setting('full_page_writes'),
       current_setting('autovacuum'), current_setting('jit'),
       coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)`

	checkpointSQL = `CHECKPOINT`
	// walLSNSQL is the current WAL insert position in bytes; differences
	// give the WAL a stage wrote.
	walLSNSQL = `SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint`

	truncateAllSQL    = `TRUNCATE audit_outbox, audit_events, audit_chain_heads, audit_checkpoints, bench_datasets`
	truncateOutboxSQL = `TRUNCATE audit_outbox`
	countOutboxSQL    = `SELECT count(*) FROM audit_outbox`
	countEventsSQL    = `SELECT count(*) FROM audit_events`
	countDeadSQL      = `SELECT count(*) FROM audit_dead_letters`

	// bench_datasets remembers which bulk-loaded data sets audit_events
	// holds, so that query and export in one run of "all" share them.
	createDatasetsSQL = `CREATE TABLE IF NOT EXISTS bench_datasets (name text PRIMARY KEY, rows bigint NOT NULL)`
	datasetRowsSQL    = `SELECT coalesce((SELECT rows FROM bench_datasets WHERE name = $1), -1)`
	markDatasetSQL    = `INSERT INTO bench_datasets (name, rows) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET rows = EXCLUDED.rows`
	// advanceSeqSQL keeps audit_seq ahead of seq values the bulk load
	// assigned itself, as the relay would have.
	advanceSeqSQL   = `UPDATE audit_seq SET last_seq = greatest(last_seq, $1)`
	lastSeqSQL      = `SELECT last_seq FROM audit_seq`
	vacuumEventsSQL = `VACUUM (ANALYZE) audit_events`

	// The floor of the pipeline stage: the relayed rows, kept aside in
	// the order the relay stored them, inserted again by one statement.
	dropFloorSrcSQL   = `DROP TABLE IF EXISTS bench_floor_src`
	createFloorSrcSQL = `CREATE UNLOGGED TABLE bench_floor_src AS SELECT * FROM audit_events ORDER BY seq`
	truncateEventsSQL = `TRUNCATE audit_events`
	floorInsertSQL    = `INSERT INTO audit_events SELECT * FROM bench_floor_src`

	// storageSQL sums the heap (with TOAST, free space and visibility
	// maps) and the index sizes of every partition of audit_events.
	storageSQL = `SELECT coalesce(sum(pg_table_size(relid)), 0)::bigint,
       coalesce(sum(pg_indexes_size(relid)), 0)::bigint
FROM pg_partition_tree('audit_events') WHERE isleaf`
	// indexSizesSQL gives each index of audit_events with the size of all
	// its partitions' indexes.
	indexSizesSQL = `SELECT c.relname,
       (SELECT coalesce(sum(pg_relation_size(t.relid)), 0) FROM pg_partition_tree(i.indexrelid) t WHERE t.isleaf)::bigint
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'audit_events'::regclass
ORDER BY c.relname`
	// indexScansSQL counts the scans of each index of audit_events over
	// all partitions, to show which filters used which index.
	indexScansSQL = `SELECT c.relname,
       (SELECT coalesce(sum(s.idx_scan), 0) FROM pg_partition_tree(i.indexrelid) t
        JOIN pg_stat_user_indexes s ON s.indexrelid = t.relid WHERE t.isleaf)::bigint
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'audit_events'::regclass
ORDER BY c.relname`

	// The record stage's business table and transaction.
	createTicketsSQL = `CREATE TABLE IF NOT EXISTS bench_tickets (
    id           bigint      PRIMARY KEY,
    workspace_id text        NOT NULL,
    status       text        NOT NULL,
    priority     text        NOT NULL,
    updated_at   timestamptz NOT NULL,
    version      integer     NOT NULL DEFAULT 0
)`
	fillTicketsSQL = `INSERT INTO bench_tickets (id, workspace_id, status, priority, updated_at)
SELECT g, 'ws_' || lpad((g % 50)::text, 4, '0'), 'open', 'normal', now()
FROM generate_series(1, $1) g
ON CONFLICT (id) DO NOTHING`
	updateTicketSQL  = `UPDATE bench_tickets SET status = $2, updated_at = now(), version = version + 1 WHERE id = $1`
	vacuumTicketsSQL = `VACUUM (ANALYZE) bench_tickets`

	countWorkspaceSQL = `SELECT count(*) FROM audit_events WHERE workspace_id = $1`

	// exportCopyFormat is the export's floor: the same rows, same order,
	// straight out of COPY as CSV. The workspace is a generated name,
	// checked with outbox.ValidWorkspaceID before it is formatted in (COPY
	// takes no bind parameters; that alphabet needs no quoting).
	exportCopyFormat = `COPY (SELECT * FROM audit_events WHERE workspace_id = '%s' ORDER BY occurred_at, id) TO STDOUT WITH (FORMAT csv, HEADER true)`

	// auto_explain setup of the EXPLAIN pass: every statement's plan with
	// ANALYZE and BUFFERS is sent to the client as a NOTICE.
	loadAutoExplainSQL = `LOAD 'auto_explain'`
	autoExplainSQL     = `SELECT set_config('auto_explain.log_min_duration', '0', false),
       set_config('auto_explain.log_analyze', 'on', false),
       set_config('auto_explain.log_buffers', 'on', false),
       set_config('auto_explain.log_timing', 'on', false),
       set_config('auto_explain.log_nested_statements', 'on', false),
       set_config('auto_explain.log_level', 'notice', false)`
)
