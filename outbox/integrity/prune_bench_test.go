package integrity

import (
	"context"
	"crypto/ed25519"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/app/partitions"
	"github.com/auditlog/auditlog/internal/testdb"
)

// TestPruneLockProbe measures what retention costs the relay when it drops
// one large expired partition: Checkpointer.BeforeDrop computes the bridges
// (bridgesSQL sorts every chained row of the partition) while inserts go
// on, then partition maintenance takes LOCK TABLE audit_events IN SHARE
// MODE, and every insert waits from there to the commit of the drop while
// BeforeDrop's second step checks for events stored meanwhile. It measures
// rather than checks, so it runs only when asked:
//
//	AUDITLOG_PRUNE_PROBE=1 go test -count=1 -timeout 60m -run TestPruneLockProbe -v ./outbox/integrity/
//
// AUDITLOG_PRUNE_PROBE_EVENTS sets the events in the expired partition
// (default 1000000). The rows are generated in SQL, 50 workspaces
// interleaved in seq order, with links that are consecutive (prev_hash is
// the workspace's previous hash) but hashes that are not the events'
// canonical bytes: bridges only look at the links. It logs the EXPLAIN
// (ANALYZE, BUFFERS) of bridgesSQL, then prunes through the same entry point
// as maintenance (partitions.Maintainer.Prune with BeforeDrop wired to a
// Checkpointer with a signing key) and logs how long the SHARE lock was
// held, how long the bridges took, the temporary files the database wrote,
// and how long a single-row insert and a read started right after the lock
// took.
func TestPruneLockProbe(t *testing.T) {
	if os.Getenv("AUDITLOG_PRUNE_PROBE") == "" {
		t.Skip("set AUDITLOG_PRUNE_PROBE=1 to measure the prune of a large partition")
	}
	ctx := t.Context()
	t.Logf("load at start: %s", loadAverage())
	e := newProbeEnv(t)

	// The bridge computation alone, outside any lock.
	t.Logf("EXPLAIN (ANALYZE, BUFFERS) bridgesSQL over %s:\n%s", e.oldName, e.explain(t, bridgesSQL, &e.oldFrom, e.oldTo))

	// The prune, through the hook maintenance uses, wrapped to start an
	// insert and a read once the lock is taken.
	_, key, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	cps, err := NewCheckpointer(e.mpool, NewSigner(key), discardLogger())
	require.NoError(t, err)
	var (
		lockedAt    time.Time
		probesReady time.Duration
		bridgesTook time.Duration
		insertDone  = make(chan time.Time, 1)
		readTook    = make(chan time.Duration, 1)
		probeErrs   = make(chan error, 2)
	)
	var firstStep time.Duration
	beforeDrop := func(ctx context.Context, tx pgx.Tx, from, to time.Time) (func(context.Context) error, error) {
		// The first step, before inserts are held off: the bridges.
		s := time.Now()
		underLock, err := cps.BeforeDrop(ctx, tx, from, to)
		firstStep = time.Since(s)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			// Called right after LOCK TABLE audit_events IN SHARE MODE.
			lockedAt = time.Now()
			go func() {
				_, err := e.pool.Exec(ctx, probeInsertOneSQL, e.total+1)
				insertDone <- time.Now()
				probeErrs <- err
			}()
			go func() {
				s := time.Now()
				var c int64
				err := e.pool.QueryRow(ctx, probeReadSQL, e.now.Add(-time.Hour)).Scan(&c)
				readTook <- time.Since(s)
				probeErrs <- err
			}()
			if err := waitForBlockedInsert(ctx, e.pool); err != nil {
				return err
			}
			probesReady = time.Since(lockedAt)
			s := time.Now()
			err := underLock(ctx)
			bridgesTook = time.Since(s)
			return err
		}, nil
	}
	m, err := partitions.New(e.mpool, partitions.Config{
		RetentionDays: probeRetentionDays, BeforeDrop: beforeDrop, Logger: discardLogger(),
	})
	require.NoError(t, err)

	tempBefore := e.tempUsage(t)
	dropped, err := m.Prune(ctx, false)
	returnedAt := time.Now()
	require.NoError(t, err)
	require.Equal(t, []string{e.oldName}, dropped)
	tempAfter := e.tempUsage(t)
	insertedAt, readWait := <-insertDone, <-readTook
	require.NoError(t, <-probeErrs)
	require.NoError(t, <-probeErrs)

	// The insert started right after the lock and went through once the
	// commit released it; Prune returns later, after the commit has
	// unlinked the partition's files.
	held := insertedAt.Sub(lockedAt)
	t.Logf("events in the dropped partition: %d", e.n+e.backdated)
	t.Logf("SHARE lock held (lock to the insert going through): %s", held.Round(time.Millisecond))
	t.Logf("  of which starting the probes: %s", probesReady.Round(time.Millisecond))
	t.Logf("BeforeDrop's first step, before the lock (the bridges): %s", firstStep.Round(time.Millisecond))
	t.Logf("  of which BeforeDrop under the lock (check for late events, %d heads, %d signed checkpoints): %s",
		probeWorkspaces, probeWorkspaces, bridgesTook.Round(time.Millisecond))
	t.Logf("  of which DROP and COMMIT: %s", (held - probesReady - bridgesTook).Round(time.Millisecond))
	t.Logf("lock to Prune returning: %s", returnedAt.Sub(lockedAt).Round(time.Millisecond))
	t.Logf("concurrent read started with the lock took: %s", readWait.Round(time.Millisecond))
	t.Logf("temporary files during the prune: %d files, %d MB",
		tempAfter.files-tempBefore.files, (tempAfter.bytes-tempBefore.bytes)>>20)

	// What was signed accounts for every dropped event.
	var checkpoints, bridges, events int64
	require.NoError(t, e.pool.QueryRow(ctx, probeCheckpointsSQL).Scan(&checkpoints, &bridges, &events))
	require.EqualValues(t, probeWorkspaces, checkpoints)
	require.Equal(t, probeWorkspaces+e.backdated, bridges)
	require.Equal(t, e.n+e.backdated, events)
	t.Logf("load at end: %s", loadAverage())
}

// The probe's data set; probeInsertEventsSQL and probeHeadsSQL spell out
// probeWorkspaces and probeBackdatedEvery.
const (
	probeWorkspaces     = 50
	probeRetentionDays  = 30
	probeCurrentEvents  = 20_000
	probeBackdatedEvery = 997 // prime: the backdated events spread over the workspaces
	probeChunk          = 200_000
)

// probeEnv is a database holding a large expired partition of chained
// events (see TestPruneLockProbe) and a few current ones.
type probeEnv struct {
	pool *pgxpool.Pool
	// mpool has one connection, for maintenance: its temporary-file
	// statistics can be flushed on demand.
	mpool *pgxpool.Pool
	// n events fill the expired month [oldFrom, oldTo), partition oldName,
	// into which backdated of the total events that follow are backdated.
	n, backdated, total int64
	oldName             string
	oldFrom, oldTo, now time.Time
}

func newProbeEnv(t *testing.T) *probeEnv {
	t.Helper()
	ctx := t.Context()
	e := &probeEnv{n: 1_000_000}
	if s := os.Getenv("AUDITLOG_PRUNE_PROBE_EVENTS"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		require.NoError(t, err, "AUDITLOG_PRUNE_PROBE_EVENTS")
		require.GreaterOrEqual(t, v, int64(probeWorkspaces), "AUDITLOG_PRUNE_PROBE_EVENTS")
		e.n = v
	}
	e.pool = testdb.New(t)
	cfg, err := pgxpool.ParseConfig(e.pool.Config().ConnString())
	require.NoError(t, err)
	cfg.MaxConns = 1
	e.mpool, err = pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(e.mpool.Close)

	e.now = time.Now().UTC()
	e.oldFrom = time.Date(e.now.Year(), e.now.Month()-3, 1, 0, 0, 0, 0, time.UTC)
	e.oldTo = e.oldFrom.AddDate(0, 1, 0)
	m, err := partitions.New(e.mpool, partitions.Config{RetentionDays: probeRetentionDays, Logger: discardLogger()})
	require.NoError(t, err)
	_, err = m.Ensure(ctx)
	require.NoError(t, err)
	e.oldName, err = m.EnsureFor(ctx, e.oldFrom)
	require.NoError(t, err)

	// Seqs 1..n fill the old month; n+1..total happen in the last minutes,
	// every probeBackdatedEvery-th of them backdated into the old month (an
	// extra one-event bridge each).
	e.total = e.n + probeCurrentEvents
	e.backdated = probeCurrentEvents / probeBackdatedEvery
	step := e.oldTo.Sub(e.oldFrom) / time.Duration(e.n)
	start := time.Now()
	for lo := int64(1); lo <= e.total; lo += probeChunk {
		hi := min(lo+probeChunk-1, e.total)
		_, err := e.pool.Exec(ctx, probeInsertEventsSQL, lo, hi, e.n, e.oldFrom, step.Microseconds(), e.now, e.total)
		require.NoError(t, err)
	}
	_, err = e.pool.Exec(ctx, probeHeadsSQL, e.total)
	require.NoError(t, err)
	t.Logf("stored %d events (%d in %s, %d backdated into it) in %s",
		e.total, e.n+e.backdated, e.oldName, e.backdated, time.Since(start).Round(time.Millisecond))
	// An expired partition has long been vacuumed; the load's dirty pages
	// are written out before measuring.
	_, err = e.pool.Exec(ctx, `VACUUM (ANALYZE) `+pgx.Identifier{e.oldName}.Sanitize())
	require.NoError(t, err)
	_, err = e.pool.Exec(ctx, `CHECKPOINT`)
	require.NoError(t, err)
	var size string
	require.NoError(t, e.pool.QueryRow(ctx, `SELECT pg_size_pretty(pg_total_relation_size($1::regclass))`, e.oldName).Scan(&size))
	t.Logf("%s: %s with its indexes", e.oldName, size)
	return e
}

// explain returns the EXPLAIN (ANALYZE, BUFFERS) of query run on mpool.
func (e *probeEnv) explain(t *testing.T, query string, args ...any) string {
	t.Helper()
	rows, err := e.mpool.Query(t.Context(), `EXPLAIN (ANALYZE, BUFFERS) `+query, args...)
	require.NoError(t, err)
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return strings.Join(plan, "\n")
}

// probeInsertEventsSQL stores the events of seqs $1..$2: those up to $3 in
// the month starting at $4, $5 microseconds apart; later ones in the
// milliseconds before $6 (the last, $7, at $6), except every 997th after
// $3, backdated into the old month. Workspace ws_NNNN holds the seqs with
// (seq - 1) % 50 = NNNN; an event's hash is sha256('probe:' || seq) and its
// prev_hash the hash of seq - 50 (zeros for the first of a workspace).
const probeInsertEventsSQL = `
INSERT INTO audit_events (seq, id, workspace_id, occurred_at, recorded_at, action, actor_type,
    actor_id, actor_email, actor_name, resource_type, resource_ids, resource_ids_flat, source,
    ip, user_agent, request_id, details, prev_hash, hash)
SELECT s, gen_random_uuid(), 'ws_' || lpad(((s - 1) % 50)::text, 4, '0'), at, at + interval '1 second',
       'ticket.update', 'user', 'u_' || s % 200, 'user' || s % 200 || '@example.com', 'Alice Liddell',
       'ticket', '{"channel":"C0451","queue":"q_7","ticket":"t_' || s || '"}',
       'channel=C0451;queue=q_7;ticket=t_' || s, 'web', '203.0.113.7',
       'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36', 'req_' || s,
       '{"changes":{"priority":{"from":"normal","to":"high"},"status":{"from":"open","to":"closed"},'
           '"subject":{"from":"Printer on fire","to":"Printer on fire (again)"}},'
           '"comment":"Closed after the customer confirmed the replacement printer works as expected (' || s || ')."}',
       CASE WHEN s > 50 THEN sha256(convert_to('probe:' || (s - 50), 'UTF8')) ELSE decode(repeat('00', 32), 'hex') END,
       sha256(convert_to('probe:' || s, 'UTF8'))
FROM generate_series($1::bigint, $2::bigint) s
CROSS JOIN LATERAL (SELECT CASE
    WHEN s <= $3 THEN $4::timestamptz + (s - 1) * $5::bigint * interval '1 microsecond'
    WHEN (s - $3) % 997 = 0 THEN $4::timestamptz + (s - $3) * interval '1 second'
    ELSE $6::timestamptz - ($7::bigint - s) * interval '10 milliseconds'
END AS at) t`

// probeHeadsSQL sets the chain heads and the seq counter for seqs up to $1.
const probeHeadsSQL = `
WITH heads AS (
    INSERT INTO audit_chain_heads (workspace_id, seq, hash)
    SELECT 'ws_' || lpad(((s - 1) % 50)::text, 4, '0'), s, sha256(convert_to('probe:' || s, 'UTF8'))
    FROM generate_series($1::bigint - 49, $1::bigint) s
)
UPDATE audit_seq SET last_seq = $1`

// probeInsertOneSQL is a single-row insert like one relay move's.
const probeInsertOneSQL = `
INSERT INTO audit_events (seq, id, workspace_id, occurred_at, recorded_at, action, actor_type, source)
VALUES ($1, gen_random_uuid(), 'ws_probe', now(), now(), 'ticket.update', 'user', 'web')`

// probeReadSQL is a read of recent events, which the SHARE lock lets through.
const probeReadSQL = `SELECT count(*) FROM audit_events WHERE workspace_id = 'ws_0001' AND occurred_at >= $1`

// probeBlockedInsertSQL counts the inserts into audit_events waiting for a lock.
const probeBlockedInsertSQL = `
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO audit_events%'`

// probeCheckpointsSQL sums the prune checkpoints: how many, their bridges
// and the events those cover.
const probeCheckpointsSQL = `
SELECT count(DISTINCT c.id), count(*), coalesce(sum((b->>'events')::bigint), 0)::bigint
FROM audit_checkpoints c CROSS JOIN LATERAL jsonb_array_elements(c.bridges::jsonb) b
WHERE c.kind = 'prune'`

// waitForBlockedInsert returns once the probe's insert waits for the lock.
func waitForBlockedInsert(ctx context.Context, pool *pgxpool.Pool) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		var waiting int
		if err := pool.QueryRow(ctx, probeBlockedInsertSQL).Scan(&waiting); err != nil {
			return err
		}
		if waiting > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

type temp struct{ files, bytes int64 }

// tempUsage returns the temporary files the database has written, after
// flushing the statistics of mpool's connection (maintenance's).
func (e *probeEnv) tempUsage(t *testing.T) temp {
	t.Helper()
	// The backend flushes its statistics before it reports ready for the
	// next query, so they are visible once this returns.
	_, err := e.mpool.Exec(t.Context(), `SELECT pg_stat_force_next_flush()`)
	require.NoError(t, err)
	var u temp
	require.NoError(t, e.pool.QueryRow(t.Context(),
		`SELECT temp_files, temp_bytes FROM pg_stat_database WHERE datname = current_database()`).Scan(&u.files, &u.bytes))
	return u
}

// loadAverage returns /proc/loadavg as it reads (the 1, 5 and 15 minute
// load averages first), or why it could not.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(string(b))
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
