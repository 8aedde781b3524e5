package partitions

// listPartitionsSQL lists the partitions of the table named $1 with their
// bounds. PostgreSQL prints a range bound as text only (pg_get_expr), so
// the timestamps are cut out of it and cast back in the same session, which
// round-trips whatever the session's TimeZone and DateStyle. MINVALUE,
// MAXVALUE and DEFAULT bounds give NULL.
const listPartitionsSQL = `
SELECT c.relname,
       b.bound,
       (regexp_match(b.bound, 'FROM \(''([^'']*)''\)'))[1]::timestamptz AS lower,
       (regexp_match(b.bound, 'TO \(''([^'']*)''\)'))[1]::timestamptz   AS upper,
       c.reltuples::bigint,
       pg_total_relation_size(c.oid)
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound) b
WHERE i.inhparent = $1::regclass
ORDER BY lower NULLS FIRST, c.relname`

// parentSchemaSQL gives the schema of the table named $1, so partitions are
// created beside it whatever the search_path.
const parentSchemaSQL = `
SELECT n.nspname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = $1::regclass`

// relationExistsSQL reports whether schema $1 holds a relation named $2.
const relationExistsSQL = `
SELECT EXISTS (
    SELECT 1 FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = $2)`

// setLockTimeoutSQL is SET LOCAL lock_timeout with a bind parameter
// (milliseconds as text, e.g. '5000').
const setLockTimeoutSQL = `SELECT set_config('lock_timeout', $1, true)`

// tryLockSQL takes the maintenance lock if free, for this transaction.
const tryLockSQL = `SELECT pg_try_advisory_xact_lock($1)`

// lockSQL waits (up to lock_timeout) for the maintenance lock.
const lockSQL = `SELECT pg_advisory_xact_lock($1)`

// createPartitionSQL creates a partition: %[1]s the quoted partition name,
// %[2]s the quoted parent, %[3]s and %[4]s the bounds. The bounds are
// formatted from time.Time values, never taken from input. IF NOT EXISTS
// covers a partition created between our check and this statement by
// someone not taking the maintenance lock.
const createPartitionSQL = `CREATE TABLE IF NOT EXISTS %[1]s PARTITION OF %[2]s FOR VALUES FROM ('%[3]s') TO ('%[4]s')`

// actorStatisticsSuffix ends the name of a partition's statistics object
// (createActorStatisticsSQL); migration 00010 names those of partitions
// that existed before it the same way.
const actorStatisticsSuffix = "_actor_deps"

// createActorStatisticsSQL gives a new partition (%[2]s, quoted) the
// functional-dependency statistics %[1]s (quoted) over workspace_id and the
// actor columns. An actor's email (or id) mostly belongs to one workspace,
// so "workspace_id = W AND actor_email = E" matches about as many rows as
// the email alone; without the statistics the planner multiplies the two
// selectivities, expects a fraction of the rows (20 where 996 matched, over
// 2M events with 50 workspaces), and answers a frequent actor's first page
// with a bitmap scan of every match and a sort (3,189 buffers, 39 ms)
// instead of walking the actor index backwards (112 buffers). PostgreSQL
// keeps extended statistics per table, not per partitioned parent, so each
// partition gets its own; ANALYZE (autovacuum) fills them.
const createActorStatisticsSQL = `CREATE STATISTICS IF NOT EXISTS %[1]s (dependencies) ON workspace_id, actor_id, actor_email FROM %[2]s`

// lockInsertsSQL holds off inserts into the parent table (%s, quoted) until
// the transaction ends while reads go on: between the last look of
// Config.BeforeDrop at a partition and its drop, no event may land in it
// unaccounted for.
const lockInsertsSQL = `LOCK TABLE %s IN SHARE MODE`

// dropPartitionSQL drops a partition: %s is its quoted name.
const dropPartitionSQL = `DROP TABLE IF EXISTS %s`
