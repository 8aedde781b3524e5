package relay

import (
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// TestRelayWAL prints the WAL one drain of a backlog writes, by record type
// and by relation, read back with pg_walinspect: what PERFORMANCE.md's
// "relay vs floor" quotes. It measures rather than checks, so it runs only
// when asked:
//
//	AUDITLOG_WAL_PROBE=1 go test -count=1 -run TestRelayWAL -v ./outbox/relay/
//
// AUDITLOG_WAL_PROBE=lz4 runs it with wal_compression = lz4. Needs a
// superuser (CREATE EXTENSION pg_walinspect) and PostgreSQL 15.
func TestRelayWAL(t *testing.T) {
	probe := os.Getenv("AUDITLOG_WAL_PROBE")
	if probe == "" {
		t.Skip("set AUDITLOG_WAL_PROBE=1 (or lz4) to measure the relay's WAL")
	}
	pool := setup(t)
	ctx := t.Context()
	if probe == "lz4" {
		var db string
		require.NoError(t, pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
		_, err := pool.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` SET wal_compression = 'lz4'`)
		require.NoError(t, err)
		pool.Reset()
	}
	_, err := pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_walinspect`)
	require.NoError(t, err)

	const n = 50_000
	es := shapedEvents(n)
	for i := 0; i < n; i += 1000 {
		record(t, pool, es[i:i+1000])
	}
	r, err := New(pool, Config{Logger: testLogger(t)})
	require.NoError(t, err)

	// A backlog that waited across a checkpoint, as in the bench.
	_, err = pool.Exec(ctx, `CHECKPOINT`)
	require.NoError(t, err)
	var from, to string
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&from))
	moved, err := r.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, n, moved)
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&to))

	per := func(v int64) float64 { return float64(v) / n }
	rows, err := pool.Query(ctx, walByRecordTypeSQL, from, to)
	require.NoError(t, err)
	var total int64
	for rows.Next() {
		var kind string
		var count, rec, fpi, all int64
		require.NoError(t, rows.Scan(&kind, &count, &rec, &fpi, &all))
		total += all
		t.Logf("%-26s records/event %.3f  record B/event %6.1f  full-page images B/event %6.1f", kind, per(count), per(rec), per(fpi))
	}
	require.NoError(t, rows.Err())
	t.Logf("total: %.0f bytes of WAL per event moved", per(total))

	rows, err = pool.Query(ctx, walByRelationSQL, from, to)
	require.NoError(t, err)
	for rows.Next() {
		var rel string
		var count, fpis, rec, fpi int64
		require.NoError(t, rows.Scan(&rel, &count, &fpis, &rec, &fpi))
		t.Logf("%-62s records %6d  full-page images %5d  record B/event %6.1f  image B/event %6.1f", rel, count, fpis, per(rec), per(fpi))
	}
	require.NoError(t, rows.Err())
}

// walByRecordTypeSQL sums the WAL between two LSNs by record type.
const walByRecordTypeSQL = `
SELECT "resource_manager/record_type", count, record_size, fpi_size, combined_size
FROM pg_get_wal_stats($1::pg_lsn, $2::pg_lsn, true)
WHERE count > 0
ORDER BY combined_size DESC`

// walByRelationSQL sums the WAL between two LSNs by the relation of each
// record's first block.
const walByRelationSQL = `
SELECT coalesce(c.relname, b.relfilenode::text, '(no block)'),
       count(*), count(*) FILTER (WHERE w.fpi_length > 0),
       sum(w.record_length), sum(w.fpi_length)
FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn) w
CROSS JOIN LATERAL (SELECT (regexp_match(w.block_ref, 'rel \d+/\d+/(\d+)'))[1]::oid AS relfilenode) b
LEFT JOIN pg_class c ON c.relfilenode = b.relfilenode
GROUP BY 1
ORDER BY sum(w.record_length) + sum(w.fpi_length) DESC
LIMIT 12`
