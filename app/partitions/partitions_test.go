package partitions

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/app/config"
	"github.com/auditlog/auditlog/internal/testdb"
)

// fixedNow is the "current time" of most tests.
var fixedNow = time.Date(2026, 11, 25, 12, 30, 0, 0, time.UTC)

func at(t time.Time) func() time.Time { return func() time.Time { return t } }

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newM builds a Maintainer, filling in the test logger and fixedNow.
func newM(t *testing.T, pool *pgxpool.Pool, cfg Config) *Maintainer {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.Now == nil {
		cfg.Now = at(fixedNow)
	}
	m, err := New(pool, cfg)
	require.NoError(t, err)
	return m
}

func names(parts []Partition) []string {
	out := []string{}
	for _, p := range parts {
		out = append(out, p.Name)
	}
	return out
}

func list(t *testing.T, m *Maintainer) []Partition {
	t.Helper()
	parts, err := m.List(t.Context())
	require.NoError(t, err)
	return parts
}

// insertEvent writes one minimal event occurring at ts straight into
// audit_events.
func insertEvent(ctx context.Context, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, ts time.Time) error {
	_, err := db.Exec(ctx, `
		INSERT INTO audit_events (seq, id, workspace_id, occurred_at, recorded_at, action, actor_type, source)
		VALUES (1, gen_random_uuid(), 'ws_test', $1, now(), 'test.event', 'system', 'system')`, ts)
	return err
}

func utc(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 0, 0, 0, 0, time.UTC) }

func TestEnsureCreatesMonthWindow(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 365, Premake: 3})

	created, err := m.Ensure(t.Context())
	require.NoError(t, err)
	// now - 365 days = 2025-11-25, so from November 2025; the current month
	// (November 2026) plus 3 ahead, so up to February 2027.
	want := []string{
		"audit_events_p20251101", "audit_events_p20251201", "audit_events_p20260101",
		"audit_events_p20260201", "audit_events_p20260301", "audit_events_p20260401",
		"audit_events_p20260501", "audit_events_p20260601", "audit_events_p20260701",
		"audit_events_p20260801", "audit_events_p20260901", "audit_events_p20261001",
		"audit_events_p20261101", "audit_events_p20261201", "audit_events_p20270101",
		"audit_events_p20270201",
	}
	require.Equal(t, want, created)

	parts := list(t, m)
	require.Equal(t, want, names(parts))
	require.Equal(t, utc(2025, 11, 1), parts[0].From)
	require.Equal(t, utc(2025, 12, 1), parts[0].To)
	require.Equal(t, utc(2027, 2, 1), parts[len(parts)-1].From)
	require.Equal(t, utc(2027, 3, 1), parts[len(parts)-1].To)
	for i := 1; i < len(parts); i++ {
		require.Equal(t, parts[i-1].To, parts[i].From, "contiguous")
	}

	again, err := m.Ensure(t.Context())
	require.NoError(t, err)
	require.Empty(t, again, "second run creates nothing")
	require.Equal(t, want, names(list(t, m)))
}

func TestEnsureCreatesDayWindow(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	m := newM(t, pool, Config{Interval: IntervalDay, RetentionDays: 7, Premake: 3})

	created, err := m.Ensure(t.Context())
	require.NoError(t, err)
	// 2026-11-18 (now - 7 days) through 2026-11-28 (today + 3).
	var want []string
	for d := 18; d <= 28; d++ {
		want = append(want, partitionName(utc(2026, 11, d)))
	}
	require.Equal(t, want, created)
	require.Equal(t, "audit_events_p20261118", created[0])

	parts := list(t, m)
	require.Equal(t, want, names(parts))
	require.Equal(t, utc(2026, 11, 25), parts[7].From)
	require.Equal(t, utc(2026, 11, 26), parts[7].To)
	require.Equal(t, "FOR VALUES FROM ('2026-11-25 00:00:00+00') TO ('2026-11-26 00:00:00+00')", parts[7].Bound)

	// An event of today lands in today's partition.
	require.NoError(t, insertEvent(t.Context(), pool, fixedNow))

	again, err := m.Ensure(t.Context())
	require.NoError(t, err)
	require.Empty(t, again)
}

// After a change of partition_interval, ranges already covered by
// partitions of the other interval are skipped and only the uncovered parts
// are created; nothing fails.
func TestEnsureAcrossIntervalChange(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()
	now := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)

	monthly := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 30, Premake: 0, Now: at(now)})
	created, err := monthly.Ensure(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"audit_events_p20261001", "audit_events_p20261101"}, created)

	// month → day: October and November are covered by the monthly
	// partitions; only December 1–3 are new.
	daily := newM(t, pool, Config{Interval: IntervalDay, RetentionDays: 30, Premake: 3, Now: at(now)})
	created, err = daily.Ensure(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"audit_events_p20261201", "audit_events_p20261202", "audit_events_p20261203"}, created)

	// day → month: December is partly covered by days, so the rest of it
	// gets one partition; January is whole.
	monthly2 := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 30, Premake: 2, Now: at(now)})
	created, err = monthly2.Ensure(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"audit_events_p20261204", "audit_events_p20270101"}, created)

	parts := list(t, monthly2)
	require.Equal(t, []string{
		"audit_events_p20261001", "audit_events_p20261101",
		"audit_events_p20261201", "audit_events_p20261202", "audit_events_p20261203",
		"audit_events_p20261204", "audit_events_p20270101",
	}, names(parts))
	require.Equal(t, utc(2026, 12, 4), parts[5].From)
	require.Equal(t, utc(2027, 1, 1), parts[5].To)

	for _, ts := range []time.Time{utc(2026, 12, 2), utc(2026, 12, 20), utc(2027, 1, 31)} {
		require.NoError(t, insertEvent(ctx, pool, ts), ts)
	}

	for _, m := range []*Maintainer{monthly, daily, monthly2} {
		created, err = m.Ensure(ctx)
		require.NoError(t, err)
		require.Empty(t, created)
	}
}

// oldPartitions creates monthly partitions August–December 2025 (as an
// instance would have in December 2025) and the current window.
func oldPartitions(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	old := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 120, Now: at(time.Date(2025, 12, 10, 0, 0, 0, 0, time.UTC))})
	created, err := old.Ensure(t.Context())
	require.NoError(t, err)
	require.Equal(t, []string{
		"audit_events_p20250801", "audit_events_p20250901", "audit_events_p20251001",
		"audit_events_p20251101", "audit_events_p20251201",
	}, created)
}

func TestPruneDropsOnlyExpired(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()
	oldPartitions(t, pool)
	require.NoError(t, insertEvent(ctx, pool, time.Date(2025, 8, 15, 0, 0, 0, 0, time.UTC)))

	// Retention 365 days at 2026-11-25 12:30 keeps everything after
	// 2025-11-25 12:30: August–October 2025 end before that; November 2025
	// still holds retained days.
	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 365, Premake: 1})
	dropped, err := m.Prune(ctx, false)
	require.NoError(t, err)
	require.Equal(t, []string{"audit_events_p20250801", "audit_events_p20250901", "audit_events_p20251001"}, dropped)
	require.Equal(t, []string{"audit_events_p20251101", "audit_events_p20251201"}, names(list(t, m)))

	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_events`).Scan(&n))
	require.Zero(t, n, "the expired event went with its partition")

	again, err := m.Prune(ctx, false)
	require.NoError(t, err)
	require.Empty(t, again)

	// A partition whose upper bound is exactly the cutoff is wholly expired.
	edge := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 1, Now: at(utc(2025, 12, 2))})
	dropped, err = edge.Prune(ctx, false)
	require.NoError(t, err)
	require.Equal(t, []string{"audit_events_p20251101"}, dropped)
}

func TestPruneDryRunChangesNothing(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	oldPartitions(t, pool)
	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 365})

	before := list(t, m)
	wouldDrop, err := m.Prune(t.Context(), true)
	require.NoError(t, err)
	require.Equal(t, []string{"audit_events_p20250801", "audit_events_p20250901", "audit_events_p20251001"}, wouldDrop)
	after := list(t, m)
	require.Equal(t, names(before), names(after))
	for i := range before {
		require.Equal(t, before[i].From, after[i].From)
		require.Equal(t, before[i].To, after[i].To)
	}
}

func TestRunOnceEnsuresAndPrunes(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	oldPartitions(t, pool)
	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 365, Premake: 0})

	ran, err := m.RunOnce(t.Context())
	require.NoError(t, err)
	require.True(t, ran)
	parts := list(t, m)
	require.Equal(t, "audit_events_p20251101", parts[0].Name)
	require.Equal(t, "audit_events_p20261101", parts[len(parts)-1].Name)
	require.Len(t, parts, 13)
}

func TestEnsureForThenInsert(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()
	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 365, Premake: 3})

	future := time.Date(2099, 6, 15, 23, 59, 59, 999e6, time.UTC)
	err := insertEvent(ctx, pool, future)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "23514", pgErr.Code, "no partition of relation found for row")

	name, err := m.EnsureFor(ctx, future)
	require.NoError(t, err)
	require.Equal(t, "audit_events_p20990601", name)
	require.NoError(t, insertEvent(ctx, pool, future))

	again, err := m.EnsureFor(ctx, future)
	require.NoError(t, err)
	require.Equal(t, name, again, "an existing partition is returned, not recreated")

	// The interval is taken in UTC: 1999-02-28 22:00 at -05:00 is
	// 1999-03-01 03:00 UTC, so March.
	past := time.Date(1999, 2, 28, 22, 0, 0, 0, time.FixedZone("EST", -5*3600))
	name, err = m.EnsureFor(ctx, past)
	require.NoError(t, err)
	require.Equal(t, "audit_events_p19990301", name)
	require.NoError(t, insertEvent(ctx, pool, past))

	daily := newM(t, pool, Config{Interval: IntervalDay, RetentionDays: 365})
	name, err = daily.EnsureFor(ctx, time.Date(2030, 3, 5, 17, 0, 0, 0, time.UTC))
	require.NoError(t, err)
	require.Equal(t, "audit_events_p20300305", name)
	// A day already inside a monthly partition is left to it.
	name, err = daily.EnsureFor(ctx, time.Date(2099, 6, 2, 0, 0, 0, 0, time.UTC))
	require.NoError(t, err)
	require.Equal(t, "audit_events_p20990601", name)

	parts := list(t, m)
	require.Equal(t, []string{"audit_events_p19990301", "audit_events_p20300305", "audit_events_p20990601"}, names(parts))
	require.Equal(t, utc(2030, 3, 5), parts[1].From)
	require.Equal(t, utc(2030, 3, 6), parts[1].To)
}

// holdLock takes the maintenance lock in a transaction, as another
// instance's run would, until the returned function is called.
func holdLock(t *testing.T, pool *pgxpool.Pool) (release func()) {
	t.Helper()
	tx, err := pool.Begin(t.Context())
	require.NoError(t, err)
	_, err = tx.Exec(t.Context(), `SELECT pg_advisory_xact_lock($1)`, LockKey)
	require.NoError(t, err)
	released := false
	release = func() {
		if !released {
			released = true
			require.NoError(t, tx.Rollback(context.Background()))
		}
	}
	t.Cleanup(release)
	return release
}

func TestOnlyOneInstanceRuns(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()
	a := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 30, Premake: 1})
	b := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 30, Premake: 1})

	// Instance a is mid-run: it holds the lock.
	release := holdLock(t, pool)

	ran, err := b.RunOnce(ctx)
	require.NoError(t, err)
	require.False(t, ran, "b must skip while a holds the lock")
	created, err := b.Ensure(ctx)
	require.NoError(t, err)
	require.Empty(t, created)
	dropped, err := b.Prune(ctx, false)
	require.NoError(t, err)
	require.Empty(t, dropped)
	require.Empty(t, list(t, b), "nothing was created while locked")

	release()
	ran, err = b.RunOnce(ctx)
	require.NoError(t, err)
	require.True(t, ran)
	require.Equal(t, []string{"audit_events_p20261001", "audit_events_p20261101", "audit_events_p20261201"}, names(list(t, b)))
	ran, err = a.RunOnce(ctx)
	require.NoError(t, err)
	require.True(t, ran)
}

// EnsureFor is what the relay needs to go on, so it waits for a run in
// progress instead of skipping; the wait is bounded by LockTimeout.
func TestEnsureForWaitsForTheLock(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()

	release := holdLock(t, pool)
	short := newM(t, pool, Config{RetentionDays: 30, LockTimeout: 50 * time.Millisecond})
	_, err := short.EnsureFor(ctx, fixedNow)
	require.Error(t, err)
	require.True(t, isLockTimeout(err), "%v", err)

	m := newM(t, pool, Config{RetentionDays: 30, LockTimeout: time.Minute})
	type result struct {
		name string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		name, err := m.EnsureFor(ctx, fixedNow)
		done <- result{name, err}
	}()

	// Wait until EnsureFor is queued on the advisory lock, then release.
	require.Eventually(t, func() bool {
		var waiting bool
		err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)`).Scan(&waiting)
		return err == nil && waiting
	}, 10*time.Second, 10*time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("EnsureFor returned while the lock was held: %+v", r)
	default:
	}
	release()

	select {
	case r := <-done:
		require.NoError(t, r.err)
		require.Equal(t, "audit_events_p20261101", r.name)
	case <-time.After(30 * time.Second):
		t.Fatal("EnsureFor did not finish after the lock was released")
	}
}

// A reader holding audit_events (a long export) makes the CREATE wait; the
// run gives up after LockTimeout at the first partition instead of queueing
// everyone once per partition.
func TestEnsureGivesUpOnLockTimeout(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()

	reader, err := pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = reader.Rollback(context.Background()) })
	_, err = reader.Exec(ctx, `SELECT count(*) FROM audit_events`)
	require.NoError(t, err)

	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 90, Premake: 2, LockTimeout: 50 * time.Millisecond})
	ran, err := m.RunOnce(ctx)
	require.True(t, ran)
	require.Error(t, err)
	require.True(t, isLockTimeout(err), "%v", err)
	require.Equal(t, 1, strings.Count(err.Error(), "creating partition"), "stops at the first timeout: %v", err)

	require.NoError(t, reader.Rollback(ctx))
	created, err := m.Ensure(ctx)
	require.NoError(t, err)
	require.Len(t, created, 6, "August 2026 … January 2027")
}

func TestListReportsRowsAndSize(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()
	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 30})
	_, err := m.Ensure(ctx)
	require.NoError(t, err)

	for range 3 {
		require.NoError(t, insertEvent(ctx, pool, fixedNow))
	}
	_, err = pool.Exec(ctx, `ANALYZE audit_events_p20261101`)
	require.NoError(t, err)

	parts := list(t, m)
	require.Equal(t, []string{"audit_events_p20261001", "audit_events_p20261101"}, names(parts))
	require.Equal(t, int64(3), parts[1].Rows)
	require.Positive(t, parts[1].Bytes)
	require.Positive(t, parts[0].Bytes, "indexes take space even when empty")
}

// Partitions made by hand with odd bounds, MINVALUE or a DEFAULT partition
// are listed and respected.
func TestHandMadePartitions(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()
	for _, sql := range []string{
		`CREATE TABLE audit_events_old PARTITION OF audit_events FOR VALUES FROM (MINVALUE) TO ('2026-10-15 12:00:00+00')`,
		`CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT`,
	} {
		_, err := pool.Exec(ctx, sql)
		require.NoError(t, err)
	}
	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 60, Premake: 0})
	created, err := m.Ensure(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"audit_events_p20261015_120000", "audit_events_p20261101"}, created)

	parts := list(t, m)
	require.Equal(t, []string{"audit_events_default", "audit_events_old", "audit_events_p20261015_120000", "audit_events_p20261101"}, names(parts))
	require.True(t, parts[0].From.IsZero() && parts[0].To.IsZero())
	require.Equal(t, "DEFAULT", parts[0].Bound)
	require.True(t, parts[1].From.IsZero())
	require.Equal(t, time.Date(2026, 10, 15, 12, 0, 0, 0, time.UTC), parts[1].To)

	// Neither is ever pruned while it could hold retained rows; the MINVALUE
	// one goes once its upper bound has expired.
	later := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 60, Now: at(utc(2026, 12, 20))})
	dropped, err := later.Prune(ctx, false)
	require.NoError(t, err)
	require.Equal(t, []string{"audit_events_old"}, dropped)
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(t.Context(), "postgres://nobody@127.0.0.1:1/none") // never connects
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	_, err = New(nil, Config{RetentionDays: 1})
	require.ErrorContains(t, err, "pool")

	for field, cfg := range map[string]Config{
		"Interval":      {Interval: "week", RetentionDays: 1},
		"RetentionDays": {RetentionDays: 0},
		"Premake":       {RetentionDays: 1, Premake: -1},
		"LockTimeout":   {RetentionDays: 1, LockTimeout: -time.Second},
	} {
		_, err := New(pool, cfg)
		require.ErrorContains(t, err, field)
	}

	reg := prometheus.NewRegistry()
	_, err = New(pool, Config{RetentionDays: 1, Registerer: reg})
	require.NoError(t, err)
	_, err = New(pool, Config{RetentionDays: 1, Registerer: reg})
	require.ErrorContains(t, err, "Registerer")

	m, err := New(pool, Config{RetentionDays: 1})
	require.NoError(t, err)
	require.Equal(t, IntervalMonth, m.interval)
	require.Equal(t, LockTimeoutDefault, m.lockTimeout)
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	oldPartitions(t, pool)
	reg := prometheus.NewRegistry()
	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 365, Premake: 0, Registerer: reg})

	_, err := m.RunOnce(t.Context())
	require.NoError(t, err)

	got := map[string]float64{}
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			if mt.GetGauge() != nil {
				got[f.GetName()] = mt.GetGauge().GetValue()
			} else {
				got[f.GetName()] = mt.GetCounter().GetValue()
			}
		}
	}
	require.Equal(t, map[string]float64{
		"auditlog_partitions": 13, // Nov 2025 … Nov 2026
		// Premake 0: the newest partition is November 2026's.
		"auditlog_partitions_newest_upper_bound_seconds": float64(utc(2026, 12, 1).Unix()),
		"auditlog_partitions_created_total":              11, // Jan … Nov 2026
		"auditlog_partitions_dropped_total":              3,  // Aug … Oct 2025
		"auditlog_partitions_errors_total":               0,
		"auditlog_partitions_skipped_total":              0, // RunOnce is not a scheduled tick
	}, got)
}

func TestScheduler(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	m := newM(t, pool, Config{Interval: IntervalDay, RetentionDays: 2, Premake: 1})

	require.ErrorContains(t, m.Start(t.Context(), "every hour"), "parsing schedule")

	require.NoError(t, m.Start(t.Context(), "@every 1h"))
	require.ErrorContains(t, m.Start(t.Context(), "@every 1h"), "already started")
	// Start runs once right away.
	require.Eventually(t, func() bool {
		parts, err := m.List(t.Context())
		return err == nil && len(parts) == 4
	}, 20*time.Second, 20*time.Millisecond)

	stopCtx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m.Stop(stopCtx)
	m.Stop(stopCtx) // idempotent

	// Restartable after Stop.
	require.NoError(t, m.Start(t.Context(), "@daily"))
	m.Stop(stopCtx)
}

func TestGaps(t *testing.T) {
	t.Parallel()
	d := func(day int) time.Time { return utc(2026, 11, day) }
	p := func(from, to time.Time) Partition { return Partition{From: from, To: to} }
	for _, tc := range []struct {
		name  string
		parts []Partition
		want  []span
	}{
		{"none", nil, []span{{d(1), d(30)}}},
		{"covered", []Partition{p(d(1), d(30))}, nil},
		{"wider", []Partition{p(time.Time{}, time.Time{})}, nil},
		{"before and after", []Partition{p(d(1).AddDate(0, -1, 0), d(1)), p(d(30), d(30).AddDate(0, 1, 0))}, []span{{d(1), d(30)}}},
		{"middle", []Partition{p(d(5), d(10))}, []span{{d(1), d(5)}, {d(10), d(30)}}},
		{"two", []Partition{p(d(1), d(3)), p(d(5), d(6))}, []span{{d(3), d(5)}, {d(6), d(30)}}},
		{"min value", []Partition{p(time.Time{}, d(4))}, []span{{d(4), d(30)}}},
		{"max value", []Partition{p(d(20), time.Time{})}, []span{{d(1), d(20)}}},
		{"default ignored", []Partition{{Bound: "DEFAULT"}}, []span{{d(1), d(30)}}},
	} {
		require.Equal(t, tc.want, gaps(d(1), d(30), tc.parts), tc.name)
	}
}

// Bounds are read back from PostgreSQL's text form; that must work whatever
// the session's TimeZone and DateStyle.
func TestBoundsUnderOtherSessionSettings(t *testing.T) {
	t.Parallel()
	base := testdb.New(t)
	cfg := base.Config()
	cfg.ConnConfig.RuntimeParams["timezone"] = "America/New_York"
	cfg.ConnConfig.RuntimeParams["datestyle"] = "SQL, DMY"
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 30, Premake: 0})
	created, err := m.Ensure(t.Context())
	require.NoError(t, err)
	require.Equal(t, []string{"audit_events_p20261001", "audit_events_p20261101"}, created)

	parts := list(t, m)
	require.Contains(t, parts[1].Bound, "EST")
	require.Equal(t, utc(2026, 11, 1), parts[1].From)
	require.Equal(t, utc(2026, 12, 1), parts[1].To)

	created, err = m.Ensure(t.Context())
	require.NoError(t, err)
	require.Empty(t, created)
}

// Long runs commit every ddlPerTransaction changes and carry on; the result
// is the same as in one transaction.
func TestRunsCommitInBatches(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()
	m := newM(t, pool, Config{Interval: IntervalDay, RetentionDays: 7, Premake: 3})
	m.ddlPerTransaction = 3

	created, err := m.Ensure(ctx)
	require.NoError(t, err)
	require.Len(t, created, 11)
	require.Len(t, list(t, m), 11)

	// Ten days later with the same retention: the first ten days expire,
	// and the new window is created.
	later := newM(t, pool, Config{Interval: IntervalDay, RetentionDays: 7, Premake: 3, Now: at(fixedNow.AddDate(0, 0, 10))})
	later.ddlPerTransaction = 3
	ran, err := later.RunOnce(ctx)
	require.NoError(t, err)
	require.True(t, ran)
	parts := list(t, later)
	require.Equal(t, "audit_events_p20261128", parts[0].Name)
	require.Equal(t, "audit_events_p20261208", parts[len(parts)-1].Name)
	require.Len(t, parts, 11)
}

// TestScheduledRunOncePerPeriod: two instances whose cron clocks differ
// run the scheduled maintenance once per period between them, not once
// each.
func TestScheduledRunOncePerPeriod(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()
	a := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 30, Premake: 1})
	b := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 30, Premake: 1})
	sched, err := config.ScheduleParser.Parse("@every 1h")
	require.NoError(t, err)
	t0 := time.Now().UTC().Truncate(time.Second)

	require.True(t, a.scheduledRun(ctx, sched, t0), "first tick runs")
	require.False(t, b.scheduledRun(ctx, sched, t0.Add(20*time.Minute)), "b's tick 20 min after a's run is the same period")
	require.True(t, b.scheduledRun(ctx, sched, t0.Add(40*time.Minute)), "40 min later is the next period")
	require.False(t, a.scheduledRun(ctx, sched, t0.Add(60*time.Minute)))
	require.True(t, a.scheduledRun(ctx, sched, t0.Add(120*time.Minute)))
	require.Equal(t, 1.0, testutil.ToFloat64(a.metrics.skipped))
	require.Equal(t, 1.0, testutil.ToFloat64(b.metrics.skipped))
}

// TestBeforeDropHoldsOffInserts checks Config.BeforeDrop's two steps: the
// first runs while inserts go on; the function it returns runs when no
// event can be inserted any more (so none is dropped unseen); reads go on
// throughout, every drop committing on its own; and an error from either
// step keeps the partition.
func TestBeforeDropHoldsOffInserts(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()
	oldPartitions(t, pool)
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, `SET lock_timeout = '200ms'`)
	require.NoError(t, err)
	reads := func() {
		var n int
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM audit_events`).Scan(&n), "reads go on")
	}
	var calls, locked int
	check := func(ctx context.Context, tx pgx.Tx, from, to time.Time) (func(context.Context) error, error) {
		calls++
		require.NoError(t, insertEvent(ctx, conn.Conn(), from.Add(time.Hour)), "inserts go on during the first step")
		reads()
		if from.Month() == time.October {
			return nil, errors.New("refused first")
		}
		return func(ctx context.Context) error {
			locked++
			err := insertEvent(ctx, conn.Conn(), from.Add(2*time.Hour))
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr, "an insert must wait for the drop")
			require.Equal(t, "55P03", pgErr.Code) // lock_not_available
			reads()
			if from.Month() == time.September {
				return errors.New("refused under the lock")
			}
			return nil
		}, nil
	}
	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 365, Premake: 1, BeforeDrop: check})
	dropped, err := m.Prune(ctx, false)
	require.ErrorContains(t, err, "refused under the lock")
	require.ErrorContains(t, err, "refused first")
	require.Equal(t, []string{"audit_events_p20250801"}, dropped)
	require.Equal(t, 3, calls)
	require.Equal(t, 2, locked)
	left := names(list(t, m))
	require.Contains(t, left, "audit_events_p20250901", "an error under the lock keeps the partition")
	require.Contains(t, left, "audit_events_p20251001", "an error in the first step keeps the partition")
}

// TestPartitionsKnowActorsBelongToWorkspaces: every partition maintenance
// creates carries dependency statistics over workspace_id and the actor
// columns, so once analysed the planner's estimate for "workspace_id = W
// AND actor_email = E" is about the email's own frequency, not its product
// with the workspace's (createActorStatisticsSQL says why that matters).
func TestPartitionsKnowActorsBelongToWorkspaces(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := t.Context()
	m := newM(t, pool, Config{Interval: IntervalMonth, RetentionDays: 30, Premake: 1})
	created, err := m.Ensure(ctx)
	require.NoError(t, err)
	var stats int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_statistic_ext WHERE stxname = ANY($1::text[])`,
		suffixed(created, actorStatisticsSuffix)).Scan(&stats))
	require.Equal(t, len(created), stats, "one statistics object per partition created")

	// 50 workspaces, 20 actors each, an actor in one workspace only: 60
	// rows per (workspace, email) in the current month's partition.
	_, err = pool.Exec(ctx, `
		INSERT INTO audit_events (seq, id, workspace_id, occurred_at, recorded_at, action, actor_type, actor_email, source)
		SELECT g, gen_random_uuid(), 'ws_' || (g % 50), $1::timestamptz + (g || ' seconds')::interval, now(), 'a.b', 'user',
		       'u' || ((g / 50) % 20) || '@ws_' || (g % 50), 'web'
		FROM generate_series(1, 60000) g`, fixedNow.AddDate(0, 0, -5))
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `ANALYZE audit_events`)
	require.NoError(t, err)
	var plan string
	require.NoError(t, pool.QueryRow(ctx, `EXPLAIN (FORMAT JSON) SELECT seq FROM audit_events
		WHERE workspace_id = 'ws_7' AND actor_email = 'u3@ws_7' AND occurred_at >= $1`, fixedNow.AddDate(0, 0, -6)).Scan(&plan))
	var doc []struct {
		Plan struct {
			Rows float64 `json:"Plan Rows"`
		} `json:"Plan"`
	}
	require.NoError(t, json.Unmarshal([]byte(plan), &doc))
	require.Len(t, doc, 1)
	// Without the statistics the estimate is 60 / 50, about 1.
	require.Greater(t, doc[0].Plan.Rows, 20.0, "estimate for 60 matching rows: %s", plan)
}

// suffixed returns each name with suffix appended.
func suffixed(names []string, suffix string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = n + suffix
	}
	return out
}
