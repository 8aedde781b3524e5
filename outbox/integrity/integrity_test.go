package integrity_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/app/partitions"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
	"github.com/auditlog/auditlog/outbox/integrity"
	"github.com/auditlog/auditlog/outbox/relay"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ws = "ws_chain"

// env is a migrated database with partitions, a relay and a signing key.
type env struct {
	pool   *pgxpool.Pool
	relay  *relay.Relay
	signer *integrity.Signer
	cps    *integrity.Checkpointer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool := testdb.New(t)
	m, err := partitions.New(pool, partitions.Config{RetentionDays: 365, Premake: 1})
	require.NoError(t, err)
	_, err = m.Ensure(t.Context())
	require.NoError(t, err)
	r, err := relay.New(pool, relay.Config{BatchSize: 7})
	require.NoError(t, err)
	signer, err := integrity.GenerateKeyFile(filepath.Join(t.TempDir(), "signing.key"))
	require.NoError(t, err)
	cps, err := integrity.NewCheckpointer(pool, signer, nil)
	require.NoError(t, err)
	return &env{pool: pool, relay: r, signer: signer, cps: cps}
}

// record stores n events of workspace w occurring at the given times
// (time.Now when zero), relayed and chained.
func (e *env) record(t *testing.T, w string, at ...time.Time) {
	t.Helper()
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	evs := make([]outbox.Event, len(at))
	for i, ts := range at {
		evs[i] = outbox.Event{
			WorkspaceID: w, OccurredAt: ts, Action: "ticket.update", Source: "web",
			Actor:    outbox.Actor{Type: "user", Email: fmt.Sprintf("u%d@acme.io", i), Name: "Zoë \"Q\" <x>\n\t\u0001"},
			Resource: outbox.Resource{Type: "ticket", IDs: map[string]any{"ticket": fmt.Sprintf("t_%d", i), "n": 1.5e10}},
			IP:       "2001:db8::1", UserAgent: "ua/1.0 \u2028", RequestID: "req_1",
			Details: map[string]any{"i": i, "big": 1e21, "s": "é\u00e9\U0001F600", "nested": map[string]any{"b": []any{1, "x", nil, true}}},
		}
	}
	tx, err := e.pool.Begin(t.Context())
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	require.NoError(t, rec.RecordBatch(t.Context(), tx, evs))
	require.NoError(t, tx.Commit(t.Context()))
	_, err = e.relay.Drain(t.Context())
	require.NoError(t, err)
}

func nowTimes(n int) []time.Time { return make([]time.Time, n) }

func (e *env) verify(t *testing.T) *integrity.Report {
	t.Helper()
	rep, err := integrity.VerifyWorkspace(t.Context(), e.pool, ws, e.signer.PublicKey())
	require.NoError(t, err)
	return rep
}

// tamper runs sql with triggers off, as someone with the table owner's
// rights could.
func (e *env) tamper(t *testing.T, sql string, args ...any) {
	t.Helper()
	conn, err := e.pool.Acquire(t.Context())
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(t.Context(), "SET session_replication_role = replica")
	require.NoError(t, err)
	tag, err := conn.Exec(t.Context(), sql, args...)
	require.NoError(t, err)
	require.NotZero(t, tag.RowsAffected(), "tampering changed nothing: %s", sql)
	_, err = conn.Exec(t.Context(), "RESET session_replication_role")
	require.NoError(t, err)
}

func seqs(t *testing.T, pool *pgxpool.Pool, w string) []int64 {
	t.Helper()
	rows, err := pool.Query(t.Context(), `SELECT seq FROM audit_events WHERE workspace_id = $1 ORDER BY seq`, w)
	require.NoError(t, err)
	var out []int64
	for rows.Next() {
		var s int64
		require.NoError(t, rows.Scan(&s))
		out = append(out, s)
	}
	require.NoError(t, rows.Err())
	return out
}

func TestUntouchedChainVerifies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.record(t, ws, nowTimes(20)...)
	e.record(t, "ws_other", nowTimes(9)...) // interleaved workspace, own chain
	e.record(t, ws, nowTimes(11)...)
	reg := prometheus.NewRegistry()
	require.NoError(t, e.cps.Register(reg))
	made, err := e.cps.Checkpoint(t.Context(), "", integrity.KindScheduled, false)
	require.NoError(t, err)
	require.Len(t, made, 2)
	require.Equal(t, 2.0, gathered(t, reg, "auditlog_integrity_checkpoints_total"))
	require.InDelta(t, float64(time.Now().Unix()), gathered(t, reg, "auditlog_integrity_last_checkpoint_timestamp_seconds"), 60)
	for _, sql := range []string{`UPDATE audit_checkpoints SET seq = seq + 1`, `DELETE FROM audit_checkpoints`} {
		_, err := e.pool.Exec(t.Context(), sql)
		require.ErrorContains(t, err, "immutable", sql)
	}
	again, err := e.cps.Checkpoint(t.Context(), "", integrity.KindScheduled, false)
	require.NoError(t, err)
	require.Empty(t, again, "no new events, no new checkpoint")
	e.record(t, ws, nowTimes(3)...)

	rep := e.verify(t)
	require.True(t, rep.OK(), "%v", rep.Break)
	require.EqualValues(t, 34, rep.Events)
	require.Equal(t, 1, rep.Checkpoints)
	require.Equal(t, 1, rep.Matched)
	require.True(t, rep.SignaturesChecked)
	require.NotZero(t, rep.UnanchoredFrom, "the last 3 events are after the checkpoint")

	var first []byte
	require.NoError(t, e.pool.QueryRow(t.Context(),
		`SELECT prev_hash FROM audit_events WHERE workspace_id = $1 ORDER BY seq LIMIT 1`, ws).Scan(&first))
	require.Equal(t, integrity.Genesis, first)
}

func TestTamperingIsDetected(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// tamper changes the stored log, given the workspace's seqs.
		tamper func(t *testing.T, e *env, s []int64)
		kind   string
		// at picks the seq the break must be reported at.
		at func(s []int64) int64
	}{
		{
			name: "update a field",
			tamper: func(t *testing.T, e *env, s []int64) {
				e.tamper(t, `UPDATE audit_events SET actor_email = 'mallory@acme.io' WHERE workspace_id = $1 AND seq = $2`, ws, s[5])
			},
			kind: integrity.BreakChanged, at: func(s []int64) int64 { return s[5] },
		},
		{
			name: "update details",
			tamper: func(t *testing.T, e *env, s []int64) {
				e.tamper(t, `UPDATE audit_events SET details = '{"i":99}' WHERE workspace_id = $1 AND seq = $2`, ws, s[0])
			},
			kind: integrity.BreakChanged, at: func(s []int64) int64 { return s[0] },
		},
		{
			name: "delete a row",
			tamper: func(t *testing.T, e *env, s []int64) {
				e.tamper(t, `DELETE FROM audit_events WHERE workspace_id = $1 AND seq = $2`, ws, s[7])
			},
			kind: integrity.BreakMissing, at: func(s []int64) int64 { return s[8] },
		},
		{
			name: "delete the first row",
			tamper: func(t *testing.T, e *env, s []int64) {
				e.tamper(t, `DELETE FROM audit_events WHERE workspace_id = $1 AND seq = $2`, ws, s[0])
			},
			kind: integrity.BreakMissing, at: func(s []int64) int64 { return s[1] },
		},
		{
			name: "delete the tail past the checkpoint",
			tamper: func(t *testing.T, e *env, s []int64) {
				// The last 3 events are after the checkpoint (unanchored);
				// deleting from before it must show.
				e.tamper(t, `DELETE FROM audit_events WHERE workspace_id = $1 AND seq >= $2`, ws, s[len(s)-5])
			},
			kind: integrity.BreakMissing, at: func(s []int64) int64 { return s[len(s)-4] },
		},
		{
			name: "insert a forged row",
			tamper: func(t *testing.T, e *env, s []int64) {
				// A copy of event 9 under a new id, placed in the seq gap
				// after it, with a made-up hash.
				e.tamper(t, `INSERT INTO audit_events
					SELECT seq + 1, gen_random_uuid(), workspace_id, occurred_at, recorded_at, 'member.remove',
					       actor_type, actor_id, actor_email, actor_name, resource_type, resource_ids,
					       resource_ids_flat, source, ip, user_agent, request_id, details,
					       prev_hash, sha256(hash)
					FROM audit_events WHERE workspace_id = $1 AND seq = $2`, ws, s[9])
			},
			kind: integrity.BreakChanged, at: func(s []int64) int64 { return s[9] + 1 },
		},
		{
			name: "insert a forged row with a correct hash",
			tamper: func(t *testing.T, e *env, s []int64) {
				e.tamper(t, `INSERT INTO audit_events
					SELECT seq + 1, id2, workspace_id, occurred_at, recorded_at, action,
					       actor_type, actor_id, actor_email, actor_name, resource_type, resource_ids,
					       resource_ids_flat, source, ip, user_agent, request_id, details,
					       hash, sha256(hash || convert_to(audit_event_canonical(id2, workspace_id, occurred_at, recorded_at,
					           action, actor_type, actor_id, actor_email, actor_name, resource_type, resource_ids,
					           source, ip, user_agent, request_id, details), 'UTF8'))
					FROM (SELECT *, gen_random_uuid() AS id2 FROM audit_events WHERE workspace_id = $1 AND seq = $2) x`, ws, s[9])
			},
			kind: integrity.BreakInserted, at: func(s []int64) int64 { return s[9] + 1 },
		},
		{
			name: "swap two rows' seq",
			tamper: func(t *testing.T, e *env, s []int64) {
				e.tamper(t, `UPDATE audit_events SET seq = CASE seq WHEN $2 THEN $3 ELSE $2 END
					WHERE workspace_id = $1 AND seq IN ($2, $3)`, ws, s[10], s[11])
			},
			kind: integrity.BreakReordered, at: func(s []int64) int64 { return s[10] },
		},
		{
			name: "change a row and recompute the chain after it",
			tamper: func(t *testing.T, e *env, s []int64) {
				// Rewrite event 2 and every hash after it consistently: only
				// the signed checkpoint can tell.
				e.tamper(t, `UPDATE audit_events SET action = 'member.remove' WHERE workspace_id = $1 AND seq = $2`, ws, s[2])
				rehash(t, e, s[2])
			},
			kind: integrity.BreakChanged, at: func(s []int64) int64 { return s[len(s)-4] },
		},
		{
			name: "forge a checkpoint",
			tamper: func(t *testing.T, e *env, s []int64) {
				e.tamper(t, `UPDATE audit_checkpoints SET seq = seq - 1 WHERE workspace_id = $1`, ws)
			},
			kind: integrity.BreakCheckpoint, at: func(s []int64) int64 { return s[len(s)-4] - 1 },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.record(t, ws, nowTimes(10)...)
			// A seq gap, as duplicates leave, to place a forged row in.
			_, err := e.pool.Exec(t.Context(), `UPDATE audit_seq SET last_seq = last_seq + 5`)
			require.NoError(t, err)
			e.record(t, ws, nowTimes(10)...)
			_, err = e.cps.Checkpoint(t.Context(), ws, integrity.KindManual, false)
			require.NoError(t, err)
			e.record(t, ws, nowTimes(3)...)
			s := seqs(t, e.pool, ws)
			require.Len(t, s, 23)
			require.True(t, e.verify(t).OK(), "before tampering")

			tc.tamper(t, e, s)
			rep := e.verify(t)
			require.NotNil(t, rep.Break, "tampering went unnoticed")
			require.Equal(t, tc.kind, rep.Break.Kind, "%v", rep.Break)
			require.Equal(t, tc.at(s), rep.Break.Seq, "%v", rep.Break)
		})
	}
}

// rehash recomputes prev_hash and hash of ws's events from seq from on, as
// a forger who knows the construction would.
func rehash(t *testing.T, e *env, from int64) {
	t.Helper()
	rows, err := e.pool.Query(t.Context(), `
		SELECT seq, prev_hash, convert_to(audit_event_canonical(id, workspace_id, occurred_at, recorded_at,
		       action, actor_type, actor_id, actor_email, actor_name, resource_type, resource_ids,
		       source, ip, user_agent, request_id, details), 'UTF8')
		FROM audit_events WHERE workspace_id = $1 AND seq >= $2 ORDER BY seq`, ws, from)
	require.NoError(t, err)
	type row struct {
		seq        int64
		prev, body []byte
	}
	var all []row
	for rows.Next() {
		var r row
		require.NoError(t, rows.Scan(&r.seq, &r.prev, &r.body))
		all = append(all, r)
	}
	require.NoError(t, rows.Err())
	prev := all[0].prev
	for _, r := range all {
		h := integrity.Link(prev, r.body)
		e.tamper(t, `UPDATE audit_events SET prev_hash = $3, hash = $4 WHERE workspace_id = $1 AND seq = $2`, ws, r.seq, prev, h)
		prev = h
	}
	e.tamper(t, `UPDATE audit_chain_heads SET hash = $2 WHERE workspace_id = $1`, ws, prev)
}

func TestVerifyAfterPrune(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	now := time.Now().UTC()
	old := now.AddDate(0, 0, -40)
	// Backdated events land in an older partition, interleaved in the chain
	// with current ones: retention will cut holes in the middle of it, not
	// just its start.
	e.record(t, ws, old, old, time.Time{}, old)
	e.record(t, ws, time.Time{}, old, old)
	_, err := e.cps.Checkpoint(t.Context(), ws, integrity.KindScheduled, false)
	require.NoError(t, err)
	e.record(t, ws, time.Time{}, time.Time{}, old) // the head itself will be pruned
	_, err = e.cps.Checkpoint(t.Context(), ws, integrity.KindScheduled, false)
	require.NoError(t, err)
	e.record(t, ws, time.Time{})
	require.True(t, e.verify(t).OK())

	// Prune as of the day the old events' partition expires.
	oldEnd := time.Date(old.Year(), old.Month()+1, 1, 0, 0, 0, 0, time.UTC)
	const retention = 30
	m, err := partitions.New(e.pool, partitions.Config{
		RetentionDays: retention,
		Now:           func() time.Time { return oldEnd.AddDate(0, 0, retention) },
		BeforeDrop:    e.cps.BeforeDrop,
	})
	require.NoError(t, err)
	dropped, err := m.Prune(t.Context(), false)
	require.NoError(t, err)
	require.NotEmpty(t, dropped)
	var left int
	require.NoError(t, e.pool.QueryRow(t.Context(), `SELECT count(*) FROM audit_events WHERE workspace_id = $1`, ws).Scan(&left))
	require.Equal(t, 5, left)

	rep := e.verify(t)
	require.True(t, rep.OK(), "%v", rep.Break)
	require.EqualValues(t, 5, rep.Events)
	require.NotZero(t, rep.BridgesCrossed)
	require.Equal(t, 3, rep.Matched, "two scheduled checkpoints and the prune checkpoint")

	// Deleting a surviving event is still caught.
	s := seqs(t, e.pool, ws)
	e.tamper(t, `DELETE FROM audit_events WHERE workspace_id = $1 AND seq = $2`, ws, s[2])
	rep = e.verify(t)
	require.NotNil(t, rep.Break)
	require.Equal(t, integrity.BreakMissing, rep.Break.Kind)
	require.Equal(t, s[3], rep.Break.Seq)
}

// exportLines returns ws's NDJSON export as the database renders it.
// TestPruneAccountsForEventsStoredDuringIt: BeforeDrop computes the bridges
// before inserts are held off; events relayed between that and the lock,
// one into the partition being dropped and one after it in the chain, must
// still be accounted for (found under the lock, the bridges computed again),
// or the surviving chain would show a gap.
func TestPruneAccountsForEventsStoredDuringIt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	now := time.Now().UTC()
	old := now.AddDate(0, 0, -40)
	e.record(t, ws, old, time.Time{}, old, time.Time{})
	require.True(t, e.verify(t).OK())

	oldEnd := time.Date(old.Year(), old.Month()+1, 1, 0, 0, 0, 0, time.UTC)
	const retention = 30
	late := 0
	beforeDrop := func(ctx context.Context, tx pgx.Tx, from, to time.Time) (func(context.Context) error, error) {
		underLock, err := e.cps.BeforeDrop(ctx, tx, from, to)
		if err == nil && to.Equal(oldEnd) {
			// Between the first step and the lock: inserts still go on.
			e.record(t, ws, old, time.Time{})
			late++
		}
		return underLock, err
	}
	m, err := partitions.New(e.pool, partitions.Config{
		RetentionDays: retention,
		Now:           func() time.Time { return oldEnd.AddDate(0, 0, retention) },
		BeforeDrop:    beforeDrop,
	})
	require.NoError(t, err)
	dropped, err := m.Prune(t.Context(), false)
	require.NoError(t, err)
	require.NotEmpty(t, dropped)
	require.Equal(t, 1, late)

	var left int
	require.NoError(t, e.pool.QueryRow(t.Context(), `SELECT count(*) FROM audit_events WHERE workspace_id = $1`, ws).Scan(&left))
	require.Equal(t, 3, left, "the two current events and the late one after the dropped one")
	rep := e.verify(t)
	require.True(t, rep.OK(), "%v", rep.Break)
	require.EqualValues(t, 3, rep.Events)
	require.NotZero(t, rep.BridgesCrossed)
}

// TestBeforeDropWithoutLowerBound: a partition FROM (MINVALUE) has no lower
// bound (from is zero); its bridges still cover every chained event below
// the upper one, and none above.
func TestBeforeDropWithoutLowerBound(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	old := time.Now().UTC().AddDate(0, 0, -40)
	e.record(t, ws, old, time.Time{}, old, old, time.Time{})
	upper := time.Date(old.Year(), old.Month()+1, 1, 0, 0, 0, 0, time.UTC)

	tx, err := e.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	underLock, err := e.cps.BeforeDrop(ctx, tx, time.Time{}, upper)
	require.NoError(t, err)
	require.NoError(t, underLock(ctx))
	var bridges, events int64
	require.NoError(t, tx.QueryRow(ctx, `SELECT count(*), coalesce(sum((b->>'events')::bigint), 0)
		FROM audit_checkpoints, jsonb_array_elements(bridges::jsonb) b WHERE kind = 'prune' AND workspace_id = $1`, ws).Scan(&bridges, &events))
	require.EqualValues(t, 2, bridges, "one bridge per run of old events: the first, then the third and fourth")
	require.EqualValues(t, 3, events, "the three old events, not the current ones")
}

func exportLines(t *testing.T, pool *pgxpool.Pool) []byte {
	t.Helper()
	rows, err := pool.Query(t.Context(), `SELECT `+integrity.NDJSONLineSQL+` FROM audit_events e WHERE e.workspace_id = $1 ORDER BY e.seq`, ws)
	require.NoError(t, err)
	var buf bytes.Buffer
	for rows.Next() {
		var line string
		require.NoError(t, rows.Scan(&line))
		buf.WriteString(line)
		buf.WriteByte('\n')
	}
	require.NoError(t, rows.Err())
	return buf.Bytes()
}

func TestOfflineVerification(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.record(t, ws, nowTimes(12)...)
	_, err := e.cps.Checkpoint(t.Context(), ws, integrity.KindManual, false)
	require.NoError(t, err)
	cps, err := integrity.List(t.Context(), e.pool, ws)
	require.NoError(t, err)
	file := exportLines(t, e.pool)

	rep, err := integrity.Verify(bytes.NewReader(file), cps, e.signer.PublicKey())
	require.NoError(t, err)
	require.True(t, rep.OK(), "%v", rep.Break)
	require.EqualValues(t, 12, rep.Events)

	t.Run("edited line", func(t *testing.T) {
		edited := bytes.Replace(file, []byte(`"u4@acme.io"`), []byte(`"u5@acme.io"`), 1)
		require.NotEqual(t, file, edited)
		rep, err := integrity.Verify(bytes.NewReader(edited), cps, e.signer.PublicKey())
		require.NoError(t, err)
		require.NotNil(t, rep.Break)
		require.Equal(t, integrity.BreakChanged, rep.Break.Kind)
	})
	t.Run("dropped line", func(t *testing.T) {
		lines := strings.SplitAfter(string(file), "\n")
		cut := strings.Join(append(lines[:4:4], lines[5:]...), "")
		rep, err := integrity.Verify(strings.NewReader(cut), cps, e.signer.PublicKey())
		require.NoError(t, err)
		require.NotNil(t, rep.Break)
		require.Equal(t, integrity.BreakMissing, rep.Break.Kind)
	})
	t.Run("another key", func(t *testing.T) {
		other, err := integrity.GenerateKeyFile(filepath.Join(t.TempDir(), "k"))
		require.NoError(t, err)
		rep, err := integrity.Verify(bytes.NewReader(file), cps, other.PublicKey())
		require.NoError(t, err)
		require.NotNil(t, rep.Break)
		require.Equal(t, integrity.BreakCheckpoint, rep.Break.Kind)
	})
	t.Run("truncated tail", func(t *testing.T) {
		lines := strings.SplitAfter(string(file), "\n")
		cut := strings.Join(lines[:10], "")
		rep, err := integrity.Verify(strings.NewReader(cut), cps, e.signer.PublicKey())
		require.NoError(t, err)
		require.NotNil(t, rep.Break, "the signed head at the end is missing")
		require.Equal(t, integrity.BreakMissing, rep.Break.Kind)
	})
}

func TestKeyFiles(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "keys", "signing.key")
	s, err := integrity.GenerateKeyFile(path)
	require.NoError(t, err)
	_, err = integrity.GenerateKeyFile(path)
	require.Error(t, err, "an existing key is never overwritten")
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	loaded, err := integrity.LoadSigner(path)
	require.NoError(t, err)
	require.Equal(t, s.KeyID(), loaded.KeyID())
	for _, in := range []string{path + ".pub", integrity.EncodePublicKey(s.PublicKey())} {
		pub, err := integrity.ParsePublicKey(in)
		require.NoError(t, err)
		require.Equal(t, s.PublicKey(), pub)
	}
	_, err = integrity.ParsePublicKey("bm90IGEga2V5")
	require.ErrorContains(t, err, "bytes")
	_, err = integrity.LoadSigner(path + ".pub")
	require.ErrorContains(t, err, "PRIVATE KEY")
}

// TestDuplicatesStayOutOfTheChain resends events (in a later batch and twice
// within one batch): each is stored once and the chain still verifies, so
// the relay's fallback dropped them before hashing.
func TestDuplicatesStayOutOfTheChain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	at := time.Now().UTC().Truncate(time.Millisecond)
	ev := func(id string) outbox.Event {
		return outbox.Event{ID: id, WorkspaceID: ws, OccurredAt: at, Action: "member.invite", Source: "api",
			Actor: outbox.Actor{Type: "service", ID: "sync"}}
	}
	write := func(evs ...outbox.Event) {
		tx, err := e.pool.Begin(t.Context())
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(context.Background()) }()
		require.NoError(t, rec.RecordBatch(t.Context(), tx, evs))
		require.NoError(t, tx.Commit(t.Context()))
	}
	ids := []string{
		"0193f2a4-0000-7000-8000-000000000001", "0193f2a4-0000-7000-8000-000000000002",
		"0193f2a4-0000-7000-8000-000000000003", "0193f2a4-0000-7000-8000-000000000004",
	}
	write(ev(ids[0]), ev(ids[1]))
	e.record(t, ws, nowTimes(3)...) // moves the two above as well
	// A resend of ids[1] among new events, and ids[2] twice in one batch.
	write(ev(ids[2]), ev(ids[1]), ev(ids[3]), ev(ids[2]))
	e.record(t, ws, nowTimes(2)...)

	var stored int
	require.NoError(t, e.pool.QueryRow(t.Context(), `SELECT count(*) FROM audit_events WHERE workspace_id = $1`, ws).Scan(&stored))
	require.Equal(t, 2+3+2+2, stored)
	rep := e.verify(t)
	require.True(t, rep.OK(), "%v", rep.Break)
	require.EqualValues(t, stored, rep.Events)
	require.NotZero(t, e.relay.Stats().Duplicates)
}

// gathered returns the sum of metric name's series in reg (counters and
// gauges).
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return sum
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// TestConcurrentRelaysKeepOneChain moves events of the same workspaces with
// two relays at once: their moves interleave, and every workspace's chain
// still verifies end to end.
func TestConcurrentRelaysKeepOneChain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	workspaces := []string{ws, "ws_two", "ws_three"}
	var evs []outbox.Event
	for i := range 3000 {
		evs = append(evs, outbox.Event{WorkspaceID: workspaces[i%3], Action: "ticket.update", Source: "api",
			Actor: outbox.Actor{Type: "service", ID: "sync"}, Details: map[string]any{"i": i}})
	}
	for i := 0; i < len(evs); i += 500 {
		tx, err := e.pool.Begin(t.Context())
		require.NoError(t, err)
		require.NoError(t, rec.RecordBatch(t.Context(), tx, evs[i:i+500]))
		require.NoError(t, tx.Commit(t.Context()))
	}
	relays := make([]*relay.Relay, 2)
	for i := range relays {
		relays[i], err = relay.New(e.pool, relay.Config{BatchSize: 50})
		require.NoError(t, err)
	}
	errs := make(chan error, len(relays))
	moved := make(chan int, len(relays))
	for _, r := range relays {
		go func() {
			n, err := r.Drain(t.Context())
			moved <- n
			errs <- err
		}()
	}
	total := 0
	for range relays {
		require.NoError(t, <-errs)
		total += <-moved
	}
	require.Equal(t, len(evs), total)
	require.NotZero(t, relays[0].Stats().Batches)
	require.NotZero(t, relays[1].Stats().Batches, "both relays moved batches")
	for _, w := range workspaces {
		rep, err := integrity.VerifyWorkspace(t.Context(), e.pool, w, e.signer.PublicKey())
		require.NoError(t, err)
		require.True(t, rep.OK(), "%s: %v", w, rep.Break)
		require.EqualValues(t, 1000, rep.Events, w)
	}
}
