package relay

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	// A pool connects lazily, so no server is needed here.
	pool, err := pgxpool.New(t.Context(), "postgres://postgres@127.0.0.1:1/none")
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	_, err = New(nil, Config{})
	require.ErrorContains(t, err, "pool")

	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"negative batch", Config{BatchSize: -1}, "BatchSize"},
		{"huge batch", Config{BatchSize: BatchSizeMax + 1}, "BatchSize"},
		{"negative poll", Config{PollInterval: -time.Second}, "PollInterval"},
		{"tiny poll", Config{PollInterval: time.Microsecond}, "PollInterval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(pool, tc.cfg)
			require.ErrorContains(t, err, tc.field)
		})
	}

	t.Run("registerer conflict", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "auditlog_relay_moved_total", Help: "not ours"}))
		_, err := New(pool, Config{Registerer: reg})
		require.ErrorContains(t, err, "Registerer")
	})

	t.Run("defaults", func(t *testing.T) {
		r, err := New(pool, Config{})
		require.NoError(t, err)
		require.Equal(t, BatchSizeDefault, r.cfg.BatchSize)
		require.Equal(t, PollIntervalDefault, r.cfg.PollInterval)
		require.NotNil(t, r.log)
	})
}

// An event exists exactly when the business transaction that recorded it
// committed; Wake moves it without waiting for the poll interval.
func TestEventFollowsBusinessTransaction(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	ctx := t.Context()
	_, err := pool.Exec(ctx, `CREATE TABLE relay_tickets (id text PRIMARY KEY)`)
	require.NoError(t, err)

	closeTicket := func(id string) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO relay_tickets (id) VALUES ($1)`, id); err != nil {
				return err
			}
			e := event(0)
			e.Action = "ticket.close"
			e.Resource = outbox.Resource{Type: "ticket", IDs: map[string]any{"ticket": id}}
			return outbox.Record(ctx, tx, e)
		})
	}
	stored := func(id string) int64 {
		return queryInt(t, pool, `SELECT count(*) FROM audit_events WHERE resource_ids_flat = 'ticket=' || $1`, id)
	}

	// An hour-long poll: only Start's first look or Wake can move anything.
	r := newRelay(t, pool, Config{PollInterval: time.Hour})
	require.NoError(t, r.Start(ctx))

	// Rolled back: the business change and its event both vanish.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO relay_tickets (id) VALUES ('t_1')`)
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, tx, event(1)))
	require.NoError(t, tx.Rollback(ctx))

	require.NoError(t, closeTicket("t_2"))
	r.Wake()
	waitUntil(t, func() (bool, string) { return stored("t_2") == 1, "t_2 not stored" })

	// The loop now waits an hour; only Wake can move t_3.
	require.NoError(t, closeTicket("t_3"))
	r.Wake()
	waitUntil(t, func() (bool, string) { return stored("t_3") == 1, "t_3 not stored after Wake" })

	_, err = r.MoveOnce(ctx)
	require.NoError(t, err)
	total, ids, _ := eventCounts(t, pool)
	require.Equal(t, int64(2), total, "only committed events are stored")
	require.Equal(t, int64(2), ids)
	require.Equal(t, int64(1), stored("t_2"))
	require.Equal(t, int64(1), stored("t_3"))
	require.Zero(t, outboxDepth(t, pool))
}

func TestMovesRecordBatchOf10000(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	ids := record(t, pool, events(10_000))
	r := newRelay(t, pool, Config{})

	var sizes []int
	for {
		n, err := r.MoveOnce(t.Context())
		require.NoError(t, err)
		if n == 0 {
			break
		}
		sizes = append(sizes, n)
	}
	require.Equal(t, []int{1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000}, sizes)

	total, distinct, seqs := eventCounts(t, pool)
	require.Equal(t, int64(10_000), total)
	require.Equal(t, int64(10_000), distinct)
	require.Equal(t, int64(10_000), seqs)
	require.Equal(t, int64(1), queryInt(t, pool, `SELECT min(seq) FROM audit_events`))
	require.Equal(t, int64(10_000), queryInt(t, pool, `SELECT max(seq) FROM audit_events`))
	require.Equal(t, ids, idsBySeq(t, pool), "seq follows outbox order")
	require.Zero(t, outboxDepth(t, pool))

	st := r.Stats()
	require.Equal(t, uint64(10_000), st.Moved)
	require.Equal(t, uint64(10), st.Batches)
	require.Zero(t, st.Duplicates)
	require.Equal(t, int64(10_000), st.LastSeq)
}

func TestDuplicateEventStoredOnce(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	e := event(0)
	e.ID = "0193a5e0-7c1f-7b3a-9d0e-2f5c1a9b8e77"
	e.OccurredAt = time.Now().Add(-time.Minute)
	record(t, pool, []outbox.Event{e, e}) // twice in one batch
	record(t, pool, []outbox.Event{e})    // and again later

	r := newRelay(t, pool, Config{})
	require.Equal(t, 3, moveAll(t, r, pool))
	total, _, _ := eventCounts(t, pool)
	require.Equal(t, int64(1), total)
	require.Equal(t, uint64(2), r.Stats().Duplicates)
}

// Two relays, each with its own pool, move 50,000 events (30,000 waiting,
// 20,000 recorded while they run): every event once, seq unique, and seq in
// commit order, checked as the contract states it: a reader that has seen
// seq <= N has seen every event with seq <= N.
func TestTwoRelaysMoveEachEventOnce(t *testing.T) {
	t.Parallel()
	const waiting, concurrent, perTx = 30_000, 20_000, 1000
	const want = waiting + concurrent
	dbURL := testdb.NewURL(t)
	pool := openPool(t, dbURL, 4)
	createPartitions(t, pool)
	ctx := t.Context()

	for range waiting / 10_000 {
		record(t, pool, events(10_000))
	}

	type batch struct {
		relay       int
		first, last int64
	}
	var mu sync.Mutex
	var batches []batch
	relays := make([]*Relay, 2)
	for i := range relays {
		r := newRelay(t, openPool(t, dbURL, 2), Config{PollInterval: 20 * time.Millisecond})
		r.hooks.afterCommit = func(b moveResult) {
			mu.Lock()
			defer mu.Unlock()
			batches = append(batches, batch{i, b.lastSeq - int64(len(b.claimed)) + 1, b.lastSeq})
		}
		relays[i] = r
	}

	// The reader: each statement is one snapshot; it records the highest seq
	// it saw and how many events it saw.
	type snapshot struct{ maxSeq, count int64 }
	var snapshots []snapshot
	readerCtx, stopReader := context.WithCancel(ctx)
	readerDone := make(chan error, 1)
	readerPool := openPool(t, dbURL, 1)
	go func() {
		for readerCtx.Err() == nil {
			var s snapshot
			err := readerPool.QueryRow(readerCtx, `SELECT coalesce(max(seq), 0), count(*) FROM audit_events`).Scan(&s.maxSeq, &s.count)
			if err != nil {
				if readerCtx.Err() != nil {
					break
				}
				readerDone <- err
				return
			}
			snapshots = append(snapshots, s)
		}
		readerDone <- nil
	}()

	start := time.Now()
	for _, r := range relays {
		require.NoError(t, r.Start(ctx))
	}
	var writers sync.WaitGroup
	writerErrs := make(chan error, 2)
	for range 2 {
		writers.Go(func() {
			for range concurrent / perTx / 2 {
				if _, err := recordErr(ctx, pool, events(perTx)); err != nil {
					writerErrs <- err
					return
				}
			}
		})
	}
	writers.Wait()
	close(writerErrs)
	for err := range writerErrs {
		require.NoError(t, err)
	}
	waitUntil(t, drained(t, pool, want))
	elapsed := time.Since(start)
	for _, r := range relays {
		require.NoError(t, r.Stop(ctx))
	}
	stopReader()
	require.NoError(t, <-readerDone)

	total, distinct, seqs := eventCounts(t, pool)
	require.Equal(t, int64(want), total)
	require.Equal(t, int64(want), distinct)
	require.Equal(t, int64(want), seqs)
	require.Zero(t, queryInt(t, pool, `SELECT count(*) FROM audit_dead_letters`))

	// Both relays took part, and their reserved seq ranges never overlap.
	moved0, moved1 := relays[0].Stats().Moved, relays[1].Stats().Moved
	require.Equal(t, uint64(want), moved0+moved1)
	require.NotZero(t, moved0, "relay 0 moved nothing")
	require.NotZero(t, moved1, "relay 1 moved nothing")
	sort.Slice(batches, func(i, j int) bool { return batches[i].first < batches[j].first })
	for i := 1; i < len(batches); i++ {
		require.Greater(t, batches[i].first, batches[i-1].last, "seq ranges of batches %v and %v overlap", batches[i-1], batches[i])
	}

	// Commit order: every snapshot that saw seq N saw all events with seq <= N.
	rows, err := pool.Query(ctx, `SELECT seq FROM audit_events ORDER BY seq`)
	require.NoError(t, err)
	all, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	midway := 0
	for _, s := range snapshots {
		upTo := sort.Search(len(all), func(i int) bool { return all[i] > s.maxSeq })
		require.Equal(t, int64(upTo), s.count, "a snapshot saw seq up to %d but only %d of the %d events with seq <= %d", s.maxSeq, s.count, upTo, s.maxSeq)
		if s.count > 0 && s.count < want {
			midway++
		}
	}
	require.NotZero(t, midway, "the reader saw no snapshot while events were moving")

	t.Logf("two relays moved %d events (%d waiting, %d recorded meanwhile) in %s: %.0f events/s; split %d/%d over %d batches, %d moves rolled back for a conflict; %d reader snapshots (%d mid-stream)",
		want, waiting, concurrent, elapsed.Round(time.Millisecond), float64(want)/elapsed.Seconds(),
		moved0, moved1, len(batches), relays[0].Stats().Conflicts+relays[1].Stats().Conflicts, len(snapshots), midway)
}

// A row that cannot be stored goes to the dead letters while the rest flows;
// once the cause is fixed, retrying moves it.
func TestPoisonRowDeadLetteredAndRetried(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	ctx := t.Context()
	addPoison(t, pool)

	poison := []int{0, 57, 199}
	es := poisoned(200, poison...)
	ids := record(t, pool, es)

	// A CHECK violation shares its SQLSTATE with a missing partition; the
	// ensurer must not be asked.
	ens := &testEnsurer{pool: pool}
	r := newRelay(t, pool, Config{Partitions: ens, PollInterval: 10 * time.Millisecond})
	require.NoError(t, r.Start(ctx))
	waitUntil(t, drained(t, pool, 197))

	var good []string
	for i, id := range ids {
		if es[i].Action != poisonAction {
			good = append(good, id)
		}
	}
	require.Equal(t, good, idsBySeq(t, pool), "the good rows move, in outbox order")
	require.Zero(t, ens.calls.Load())

	dls, err := ListDeadLetters(ctx, pool, 0)
	require.NoError(t, err)
	require.Len(t, dls, 3)
	for k, d := range dls {
		require.Equal(t, ids[poison[k]], d.ID)
		require.Equal(t, poisonAction, d.Action)
		require.Equal(t, "ws_test", d.WorkspaceID)
		require.Contains(t, d.Error, `violates check constraint "poison"`)
		require.Equal(t, 1, d.Attempts)
	}
	limited, err := ListDeadLetters(ctx, pool, 2)
	require.NoError(t, err)
	require.Equal(t, dls[:2], limited)
	// The counters follow the commits: the relay counts a dead letter once
	// its statement has returned, which may be after the test saw it.
	waitUntil(t, func() (bool, string) {
		st := r.Stats()
		return st.DeadLettered == 3 && st.Moved == 197, fmt.Sprintf("stats %+v", st)
	})

	// Fix the cause, then retry one by position and the rest at once.
	_, err = pool.Exec(ctx, `ALTER TABLE audit_events DROP CONSTRAINT poison`)
	require.NoError(t, err)
	_, err = RetryDeadLetters(ctx, pool, nil)
	require.Error(t, err, "an empty position list must not mean all")
	n, err := RetryDeadLetters(ctx, pool, []int64{dls[1].Pos, 1 << 40})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	r.Wake()
	waitUntil(t, drained(t, pool, 198))
	n, err = RetryAllDeadLetters(ctx, pool)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	r.Wake()
	waitUntil(t, drained(t, pool, 200))

	total, distinct, _ := eventCounts(t, pool)
	require.Equal(t, int64(200), total)
	require.Equal(t, int64(200), distinct)
	dls, err = ListDeadLetters(ctx, pool, 0)
	require.NoError(t, err)
	require.Empty(t, dls)
}

// A dead letter retried before its cause is fixed fails again and counts
// on: attempts 1, 2, 3, not 1 each time; once fixed, it moves.
func TestDeadLetterAttemptsCountAcrossRetries(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	ctx := t.Context()
	addPoison(t, pool)
	ids := record(t, pool, poisoned(3, 1))
	r := newRelay(t, pool, Config{})

	for want := 1; want <= 3; want++ {
		moved, err := r.Drain(ctx)
		require.NoError(t, err)
		require.Equal(t, map[int]int{1: 2}[want], moved, "only the good rows move, once")
		dls, err := ListDeadLetters(ctx, pool, 0)
		require.NoError(t, err)
		require.Len(t, dls, 1)
		require.Equal(t, ids[1], dls[0].ID)
		require.Equal(t, want, dls[0].Attempts, "failure %d", want)
		n, err := RetryAllDeadLetters(ctx, pool)
		require.NoError(t, err)
		require.Equal(t, 1, n)
	}

	_, err := pool.Exec(ctx, `ALTER TABLE audit_events DROP CONSTRAINT poison`)
	require.NoError(t, err)
	moved, err := r.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, moved)
	dls, err := ListDeadLetters(ctx, pool, 0)
	require.NoError(t, err)
	require.Empty(t, dls)
	total, distinct, _ := eventCounts(t, pool)
	require.Equal(t, int64(3), total)
	require.Equal(t, int64(3), distinct)
}

// An event for a month without a partition is stored once the ensurer has
// created one; its neighbours in the batch move too.
func TestMissingPartitionCreatedByEnsurer(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	now := time.Now().UTC()
	// Two events in two months without partitions, amid others.
	old := []time.Time{
		time.Date(now.Year(), now.Month()-3, 15, 12, 0, 0, 0, time.UTC),
		time.Date(now.Year(), now.Month()-4, 2, 8, 30, 0, 0, time.UTC),
	}
	es := events(51)
	es[25].OccurredAt = old[0]
	es[40].OccurredAt = old[1]
	ids := record(t, pool, es)

	ens := &testEnsurer{pool: pool}
	r := newRelay(t, pool, Config{Partitions: ens})
	require.Equal(t, 51, moveAll(t, r, pool))

	total, _, _ := eventCounts(t, pool)
	require.Equal(t, int64(51), total)
	require.Equal(t, ids, idsBySeq(t, pool), "seq still follows outbox order")
	require.Equal(t, int64(2), ens.calls.Load())
	for _, at := range old {
		require.Equal(t, int64(1), queryInt(t, pool, `SELECT count(*) FROM audit_events WHERE occurred_at = $1`, at))
		partition := "audit_events_p" + time.Date(at.Year(), at.Month(), 1, 0, 0, 0, 0, time.UTC).Format("20060102")
		require.Equal(t, int64(1), queryInt(t, pool,
			`SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_events'::regclass AND inhrelid = to_regclass($1)`, partition))
	}
	require.Zero(t, queryInt(t, pool, `SELECT count(*) FROM audit_dead_letters`))
	require.Zero(t, r.Stats().DeadLettered)
}

// Without an ensurer an event without a partition is a dead letter; after
// the partition is made, a retry stores it, after the others in seq.
func TestMissingPartitionWithoutEnsurerIsDeadLetter(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	ctx := t.Context()
	now := time.Now().UTC()
	old := time.Date(now.Year(), now.Month()-3, 15, 12, 0, 0, 0, time.UTC)
	es := events(10)
	es[3].OccurredAt = old
	ids := record(t, pool, es)

	r := newRelay(t, pool, Config{})
	require.Equal(t, 9, moveAll(t, r, pool))
	dls, err := ListDeadLetters(ctx, pool, 0)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, ids[3], dls[0].ID)
	require.Contains(t, dls[0].Error, "no partition of relation")

	_, err = monthPartition(ctx, pool, old)
	require.NoError(t, err)
	n, err := RetryDeadLetters(ctx, pool, []int64{dls[0].Pos})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, 1, moveAll(t, r, pool))

	bySeq := idsBySeq(t, pool)
	require.Len(t, bySeq, 10)
	require.Equal(t, ids[3], bySeq[9], "the retried event committed last, so has the highest seq")
	require.Zero(t, queryInt(t, pool, `SELECT count(*) FROM audit_dead_letters`))
}

// failingEnsurer is a PartitionEnsurer that always fails with err.
type failingEnsurer struct{ err error }

func (f failingEnsurer) EnsureFor(context.Context, time.Time) (string, error) { return "", f.err }

// An ensurer that fails for good makes the row a dead letter; one that fails
// for a passing reason (here a lock timeout) leaves it for the next attempt.
func TestEnsurerFailure(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	ctx := t.Context()
	now := time.Now().UTC()
	es := events(5)
	es[2].OccurredAt = time.Date(now.Year(), now.Month()-3, 15, 12, 0, 0, 0, time.UTC)
	record(t, pool, es)

	lockTimeout := &pgconn.PgError{Code: "55P03", Message: "canceling statement due to lock timeout"}
	transient := newRelay(t, pool, Config{Partitions: failingEnsurer{fmt.Errorf("creating partition: %w", lockTimeout)}})
	n, err := transient.MoveOnce(ctx)
	require.ErrorIs(t, err, lockTimeout)
	require.Equal(t, 2, n, "the rows before the failing one moved")
	require.Equal(t, int64(3), outboxDepth(t, pool))
	require.Zero(t, queryInt(t, pool, `SELECT count(*) FROM audit_dead_letters`))
	require.Equal(t, uint64(1), transient.Stats().Errors)

	permanent := newRelay(t, pool, Config{Partitions: failingEnsurer{errors.New("outside the retention window")}})
	require.Equal(t, 2, moveAll(t, permanent, pool))
	dls, err := ListDeadLetters(ctx, pool, 0)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Contains(t, dls[0].Error, "no partition of relation")
	require.Contains(t, dls[0].Error, "outside the retention window")
}

// Stop lets the batch in flight commit, then returns; nothing more moves.
func TestStopFinishesBatchInFlight(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	record(t, pool, events(3000))

	inFlight, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	var n atomic.Int32
	r := newRelay(t, pool, Config{BatchSize: 500})
	r.hooks.beforeCommit = func(ctx context.Context, tx pgx.Tx, b moveResult) error {
		if n.Add(1) == 2 {
			close(inFlight)
			<-release
		}
		return nil
	}
	require.NoError(t, r.Start(t.Context()))
	select {
	case <-inFlight:
	case <-time.After(testTimeout):
		t.Fatal("second batch never started")
	}

	stopped := make(chan error, 1)
	go func() { stopped <- r.Stop(t.Context()) }()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) before the batch in flight finished", err)
	case <-time.After(100 * time.Millisecond):
	}
	releaseOnce.Do(func() { close(release) })
	require.NoError(t, <-stopped)

	total, _, _ := eventCounts(t, pool)
	require.Equal(t, int64(1000), total, "exactly the two batches started before Stop")
	require.Equal(t, int64(2000), outboxDepth(t, pool))
	require.Equal(t, uint64(2), r.Stats().Batches)
}

// When Stop's context ends first, the batch in flight is rolled back and
// stays in the outbox for the next relay.
func TestStopDeadlineAbortsBatchInFlight(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	record(t, pool, events(100))

	inFlight := make(chan struct{})
	var once sync.Once
	r := newRelay(t, pool, Config{})
	r.hooks.beforeCommit = func(ctx context.Context, tx pgx.Tx, b moveResult) error {
		once.Do(func() { close(inFlight) })
		<-ctx.Done()
		return ctx.Err()
	}
	require.NoError(t, r.Start(t.Context()))
	<-inFlight
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, r.Stop(ctx), context.DeadlineExceeded)

	total, _, _ := eventCounts(t, pool)
	require.Zero(t, total)
	require.Equal(t, int64(100), outboxDepth(t, pool))
	require.Zero(t, r.Stats().Batches)

	next := newRelay(t, pool, Config{})
	require.Equal(t, 100, moveAll(t, next, pool))
}

// Relays stopped gracefully and cancelled abruptly mid-stream, each replaced
// by a new one, lose and duplicate nothing.
func TestRestartResumesWithoutLoss(t *testing.T) {
	t.Parallel()
	const txs, perTx = 40, 250
	const want = txs * perTx
	pool := setup(t)
	ctx := t.Context()
	cfg := Config{BatchSize: 200, PollInterval: 10 * time.Millisecond}

	writerDone := make(chan error, 1)
	go func() {
		for range txs {
			if _, err := recordErr(ctx, pool, events(perTx)); err != nil {
				writerDone <- err
				return
			}
		}
		writerDone <- nil
	}()
	waitMoved := func(r *Relay, n uint64) {
		waitUntil(t, func() (bool, string) { return r.Stats().Moved >= n, "relay moved too little" })
	}

	// First relay: graceful Stop while events flow.
	r1 := newRelay(t, pool, cfg)
	require.NoError(t, r1.Start(ctx))
	waitMoved(r1, 1000)
	require.NoError(t, r1.Stop(ctx))

	// Second relay: its context is cancelled in the middle of its third
	// move, after the move statement, before COMMIT.
	r2 := newRelay(t, pool, cfg)
	ctx2, cancel2 := context.WithCancel(ctx)
	defer cancel2()
	var moves atomic.Int32
	r2.hooks.beforeCommit = func(context.Context, pgx.Tx, moveResult) error {
		if moves.Add(1) == 3 {
			cancel2()
		}
		return nil
	}
	require.NoError(t, r2.Start(ctx2))
	<-ctx2.Done()
	require.NoError(t, r2.Stop(ctx)) // reaps the exited loop
	require.Equal(t, uint64(2), r2.Stats().Batches, "the cancelled move must not commit")

	// Third relay finishes the job.
	r3 := newRelay(t, pool, cfg)
	require.NoError(t, r3.Start(ctx))
	require.NoError(t, <-writerDone)
	waitUntil(t, drained(t, pool, want))

	total, distinct, seqs := eventCounts(t, pool)
	require.Equal(t, int64(want), total)
	require.Equal(t, int64(want), distinct)
	require.Equal(t, int64(want), seqs)
	var moved, dups uint64
	for _, r := range []*Relay{r1, r2, r3} {
		moved += r.Stats().Moved
		dups += r.Stats().Duplicates
	}
	require.Equal(t, uint64(want), moved)
	require.Zero(t, dups)
	require.Zero(t, queryInt(t, pool, `SELECT count(*) FROM audit_dead_letters`))
}

// The relay carries on by itself after its connection dies mid-commit and
// after the database refused connections for a while (as during a restart).
func TestRecoversFromDatabaseOutage(t *testing.T) {
	t.Parallel()
	dbURL := testdb.NewURL(t)
	pool := openPool(t, dbURL, 2)
	createPartitions(t, pool)
	admin := openPool(t, testdb.AdminURL(t), 1)
	ctx := t.Context()
	dbName := pool.Config().ConnConfig.Database
	record(t, pool, events(2000))

	relayPool := openPool(t, dbURL, 2)
	r := newRelay(t, relayPool, Config{BatchSize: 500, PollInterval: 10 * time.Millisecond})
	var killed atomic.Bool
	r.hooks.beforeCommit = func(ctx context.Context, tx pgx.Tx, b moveResult) error {
		if !killed.CompareAndSwap(false, true) {
			return nil
		}
		var pid int32
		if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
			return err
		}
		// Waits until the backend has gone, so COMMIT meets a dead connection.
		_, err := admin.Exec(ctx, `SELECT pg_terminate_backend($1, 10000)`, pid)
		return err
	}
	require.NoError(t, r.Start(ctx))
	waitUntil(t, drained(t, pool, 2000))
	require.NotZero(t, r.Stats().Errors, "the killed commit must have failed")

	// An outage: no connections allowed, existing ones terminated.
	// ALTER DATABASE takes no bind parameters; the name is sanitised.
	allowSQL := func(allow bool) string {
		return fmt.Sprintf(`ALTER DATABASE %s WITH ALLOW_CONNECTIONS %t`, pgx.Identifier{dbName}.Sanitize(), allow)
	}
	_, err := admin.Exec(ctx, allowSQL(false))
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), allowSQL(true)) })
	_, err = admin.Exec(ctx, `SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = $1`, dbName)
	require.NoError(t, err)
	errorsBefore := r.Stats().Errors
	waitUntil(t, func() (bool, string) {
		return r.Stats().Errors >= errorsBefore+2, "relay did not notice the outage"
	})
	_, err = admin.Exec(ctx, allowSQL(true))
	require.NoError(t, err)
	pool.Reset() // the test's own connections were terminated too

	record(t, pool, events(1000))
	waitUntil(t, drained(t, pool, 3000))
	total, distinct, _ := eventCounts(t, pool)
	require.Equal(t, int64(3000), total)
	require.Equal(t, int64(3000), distinct)
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	addPoison(t, pool)
	record(t, pool, poisoned(11, 4))

	reg := prometheus.NewRegistry()
	r := newRelay(t, pool, Config{Registerer: reg})
	m := gather(t, reg)
	require.Equal(t, 11.0, m["auditlog_outbox_depth"])
	require.Equal(t, 0.0, m["auditlog_dead_letters"])
	require.Contains(t, m, "auditlog_outbox_oldest_age_seconds")
	require.GreaterOrEqual(t, m["auditlog_outbox_oldest_age_seconds"], 0.0)

	moveAll(t, r, pool)
	m = gather(t, reg)
	require.Equal(t, 10.0, m["auditlog_relay_moved_total"])
	require.Equal(t, 1.0, m["auditlog_relay_dead_letters_total"])
	require.Equal(t, 1.0, m["auditlog_dead_letters"], "the poison row waits in audit_dead_letters")
	require.Equal(t, 0.0, m["auditlog_relay_errors_total"])
	require.Equal(t, 1.0, m["auditlog_relay_batch_seconds"], "one batch found rows")
	require.Equal(t, 0.0, m["auditlog_outbox_depth"])
	require.Equal(t, 0.0, m["auditlog_outbox_oldest_age_seconds"])

	// A new Relay on the same registry carries the totals on.
	r2 := newRelay(t, pool, Config{Registerer: reg})
	record(t, pool, events(5))
	moveAll(t, r2, pool)
	m = gather(t, reg)
	require.Equal(t, 15.0, m["auditlog_relay_moved_total"])
}

// gather returns each metric's value: counters and gauges by value,
// histograms by sample count.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				out[mf.GetName()] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[mf.GetName()] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				out[mf.GetName()] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func TestBackoffBounded(t *testing.T) {
	t.Parallel()
	prevMax := time.Duration(0)
	for n := 1; n <= 100; n++ {
		d := backoff(n)
		require.Greater(t, d, time.Duration(0))
		require.LessOrEqual(t, d, backoffMax)
		if n <= 6 {
			upper := min(backoffMin<<(n-1), backoffMax)
			require.GreaterOrEqual(t, d, upper/2)
			require.Greater(t, upper, prevMax/2)
			prevMax = upper
		}
	}
	require.GreaterOrEqual(t, backoff(1000), backoffMax/2)
}

func TestIsRowErrorAndMissingPartition(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	ctx := t.Context()
	addPoison(t, pool)
	insert := func(action string, at time.Time) error {
		_, err := pool.Exec(ctx, `INSERT INTO audit_events (seq, id, workspace_id, occurred_at, recorded_at, action, actor_type, source)
			VALUES (1, gen_random_uuid(), 'ws', $1, now(), $2, 'user', 'api')`, at, action)
		return err
	}

	missing := insert("a.b", time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC))
	require.True(t, isRowError(missing))
	require.True(t, isMissingPartition(missing))

	check := insert(poisonAction, time.Now())
	require.True(t, isRowError(check))
	require.False(t, isMissingPartition(check))

	_, syntax := pool.Exec(ctx, `SELEC 1`)
	require.False(t, isRowError(syntax), "a broken statement is not the row's fault")
	require.False(t, isRowError(context.Canceled))
	require.False(t, isRowError(errors.New("conn closed")))

	require.False(t, isTransient(missing))
	require.False(t, isTransient(check))
	require.False(t, isTransient(errors.New("no uncovered range found")))
	require.True(t, isTransient(fmt.Errorf("wrapped: %w", context.Canceled)))
	require.True(t, isTransient(&pgconn.PgError{Code: "57P01"}))
	require.True(t, isTransient(&pgconn.PgError{Code: "55P03"}))
}

func TestDrainMovesEverything(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	record(t, pool, events(25))
	r := newRelay(t, pool, Config{BatchSize: 7})
	n, err := r.Drain(t.Context())
	require.NoError(t, err)
	require.Equal(t, 25, n)
	require.Equal(t, uint64(4), r.Stats().Batches, "7+7+7+4")
	n, err = r.Drain(t.Context())
	require.NoError(t, err)
	require.Zero(t, n)
}
