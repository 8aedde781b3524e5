package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

// Edge cases of RecordBatch's hand-written binary COPY, from a review of
// it: the framing across blocks, the encodings, the failure paths.

var edgeNow = time.Date(2026, 11, 26, 9, 30, 1, 987_654_321, time.UTC)

// edgeEvent is event i with details of about pad bytes.
func edgeEvent(i, pad int) Event {
	e := Event{
		ID:          fmt.Sprintf("01936a5e-7c1f-7b3a-9d0e-%012d", i),
		WorkspaceID: fmt.Sprintf("ws_%d", i%7),
		Action:      "ticket.update",
		Actor:       Actor{Type: "user", ID: fmt.Sprintf("u_%d", i), Email: fmt.Sprintf("u%d@acme.io", i)},
		Resource:    Resource{Type: "ticket", IDs: map[string]any{"ticket": fmt.Sprintf("t_%d", i)}},
		Source:      "web",
		IP:          "203.0.113.7",
		RequestID:   fmt.Sprintf("req_%d", i),
	}
	if pad > 0 {
		e.Details = map[string]any{"p": strings.Repeat(string(rune('a'+i%26)), pad)}
	}
	return e
}

func edgeRecorder(t testing.TB, maxDetails int) *Recorder {
	t.Helper()
	r, err := New(Options{Now: func() time.Time { return edgeNow }, MaxDetailsBytes: maxDetails, RetentionDays: 1_000_000})
	require.NoError(t, err)
	return r
}

// encodedCopy is the whole binary COPY stream of rows, encoded in one go.
func encodedCopy(rows []row) []byte {
	b := append([]byte(nil), copySignature...)
	for i := range rows {
		b = appendCopyRow(b, &rows[i])
	}
	return append(b, 0xff, 0xff)
}

// readAllBy reads r with buffers of the sizes in sizes (cycled), checking
// that io.EOF comes once, at the end.
func readAllBy(t *testing.T, r io.Reader, sizes []int) []byte {
	t.Helper()
	var out []byte
	for i := 0; ; i++ {
		p := make([]byte, sizes[i%len(sizes)])
		n, err := r.Read(p)
		out = append(out, p[:n]...)
		if err == io.EOF {
			return out
		}
		// Plain checks: testify's cost a read of one byte many times over.
		if err != nil || n == 0 || i > 1<<22 {
			t.Fatalf("read %d: n=%d err=%v (a Read returned nothing before the end, or no end)", i, n, err)
		}
	}
}

// padFor returns the details padding that makes the stream of rows
// (signature included) followed by one more row end exactly at target
// bytes, given the size of that row without padding.
func padFor(t *testing.T, r *Recorder, base int, i, target int) int {
	t.Helper()
	rowLen := func(pad int) int {
		w, err := r.normalise(edgeEvent(i, pad), edgeNow)
		require.NoError(t, err)
		return len(appendCopyRow(nil, &w))
	}
	l1, l2 := rowLen(1), rowLen(2)
	require.Equal(t, 1, l2-l1, "a byte of padding is a byte of row")
	pad := target - base - l1 + 1
	require.Positive(t, pad)
	require.Equal(t, target-base, rowLen(pad))
	return pad
}

// boundaryEvents: rows ending exactly at the first and second 65531-byte
// CopyData payloads (what pgconn reads at a time), a row exactly one payload
// long, one several payloads long, then rows near the details limit.
func boundaryEvents(t *testing.T, r *Recorder) []Event {
	t.Helper()
	const payload = 65536 - 5
	var es []Event
	size := len(copySignature)
	add := func(e Event) {
		w, err := r.normalise(e, edgeNow)
		require.NoError(t, err)
		es = append(es, e)
		size += len(appendCopyRow(nil, &w))
	}
	add(edgeEvent(0, 30000))
	add(edgeEvent(1, 20000))
	add(edgeEvent(2, padFor(t, r, size, 2, payload))) // ends at the first payload
	require.Equal(t, payload, size)
	add(edgeEvent(3, padFor(t, r, size, 3, 2*payload))) // exactly one payload
	require.Equal(t, 2*payload, size)
	add(edgeEvent(4, padFor(t, r, size, 4, 3*payload+1))) // one byte past the next
	add(edgeEvent(5, 250_000))                            // several payloads
	add(edgeEvent(6, padFor(t, r, size, 6, 7*payload-1))) // one short of a payload end
	add(edgeEvent(7, 0))                                  // no details: NULL
	for i := 8; i < 208; i++ {
		add(edgeEvent(i, MaxDetailsBytesDefault-8-i%13)) // near the default limit
	}
	return es
}

// TestCopyReaderFraming: whatever buffer sizes the reader is read
// with, the stream is the rows' encoding, whole and in order, ending in the
// trailer, with exactly-at-boundary and larger-than-a-block rows.
func TestCopyReaderFraming(t *testing.T) {
	t.Parallel()
	r := edgeRecorder(t, 400_000)
	rows, err := r.normaliseAll(context.Background(), boundaryEvents(t, r))
	require.NoError(t, err)
	want := encodedCopy(rows)
	for _, sizes := range [][]int{
		{65531}, {65536}, {65530}, {7, 65531, 3}, {40000, 1, 65531}, {copyBlock + 4096}, {1 << 20},
	} {
		got := readAllBy(t, newCopyReader(rows), sizes)
		require.True(t, bytes.Equal(want, got), "sizes %v: stream of %d bytes differs from the %d expected", sizes, len(got), len(want))
	}
	// Tiny reads, on a row without details and two near the limit (a Read
	// refills only when what is left does not fill it).
	small := rows[7:10]
	for _, sizes := range [][]int{{1}, {2}, {19}, {21}} {
		require.Equal(t, encodedCopy(small), readAllBy(t, newCopyReader(small), sizes), "sizes %v", sizes)
	}
	// One row, and a row exactly filling the first read after the signature.
	one := rows[7:8]
	require.Equal(t, encodedCopy(one), readAllBy(t, newCopyReader(one), []int{65531}))
	n := len(copySignature) + len(appendCopyRow(nil, &one[0]))
	require.Equal(t, encodedCopy(one), readAllBy(t, newCopyReader(one), []int{n}))
	require.Equal(t, encodedCopy(one), readAllBy(t, newCopyReader(one), []int{n + 1}))
	require.Equal(t, encodedCopy(one), readAllBy(t, newCopyReader(one), []int{n + 2}))
}

// TestCopyBoundaryRowsStored: the same rows through the server: every
// column of every row is stored as normalised.
func TestCopyBoundaryRowsStored(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	r := edgeRecorder(t, 400_000)
	es := boundaryEvents(t, r)
	rows, err := r.normaliseAll(ctx, es)
	require.NoError(t, err)
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return r.RecordBatch(ctx, tx, es) }))
	requireStored(t, pool, rows)
}

// requireStored: audit_outbox holds exactly rows, in order, column for
// column.
func requireStored(t *testing.T, pool *pgxpool.Pool, rows []row) {
	t.Helper()
	ctx := context.Background()
	type stored struct {
		ID, WorkspaceID                string
		OccurredAt, RecordedAt         time.Time
		Action, ActorType              string
		ActorID, ActorEmail, ActorName *string
		ResourceType, ResourceIDs      *string
		ResourceIDsFlat, Source        string
		IP                             *netip.Prefix
		UserAgent, RequestID, Details  *string
		NullFlat                       bool
	}
	q, err := pool.Query(ctx, `
SELECT id::text, workspace_id, occurred_at, recorded_at, action, actor_type, actor_id, actor_email,
       actor_name, resource_type, resource_ids, resource_ids_flat, source, ip, user_agent,
       request_id, details, resource_ids_flat IS NULL
FROM audit_outbox ORDER BY pos`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(q, pgx.RowToStructByPos[stored])
	require.NoError(t, err)
	require.Len(t, got, len(rows))
	eq := func(i int, col string, want, have *string) {
		t.Helper()
		if want == nil || have == nil {
			require.True(t, want == nil && have == nil, "row %d %s: NULL on one side only", i, col)
			return
		}
		require.True(t, *want == *have, "row %d %s: %d bytes stored, %d meant", i, col, len(*have), len(*want))
	}
	for i, g := range got {
		w := rows[i]
		require.Equal(t, w.id.String(), g.ID, "row %d", i)
		require.Equal(t, w.workspaceID, g.WorkspaceID)
		require.True(t, w.occurredAt.Equal(g.OccurredAt), "row %d occurred_at %v, meant %v", i, g.OccurredAt, w.occurredAt)
		require.True(t, w.recordedAt.Equal(g.RecordedAt), "row %d recorded_at %v, meant %v", i, g.RecordedAt, w.recordedAt)
		require.Equal(t, w.action, g.Action)
		require.Equal(t, w.actorType, g.ActorType)
		eq(i, "actor_id", w.actorID, g.ActorID)
		eq(i, "actor_email", w.actorEmail, g.ActorEmail)
		eq(i, "actor_name", w.actorName, g.ActorName)
		eq(i, "resource_type", w.resourceType, g.ResourceType)
		eq(i, "resource_ids", w.resourceIDs, g.ResourceIDs)
		require.False(t, g.NullFlat)
		require.Equal(t, w.resourceIDsFlat, g.ResourceIDsFlat)
		require.Equal(t, w.source, g.Source)
		if w.ip == nil || g.IP == nil {
			require.True(t, w.ip == nil && g.IP == nil, "row %d ip: NULL on one side only", i)
		} else {
			require.Equal(t, netip.PrefixFrom(*w.ip, w.ip.BitLen()), *g.IP, "row %d ip", i)
		}
		eq(i, "user_agent", w.userAgent, g.UserAgent)
		eq(i, "request_id", w.requestID, g.RequestID)
		eq(i, "details", w.details, g.Details)
	}
}

// TestCopyEdgeValues: times far from 2000-01-01 (BC, year 1, just
// before 1970, far future), IPv4 and IPv6 corner addresses, empty strings
// against NULLs: stored by COPY as meant, and as Record's INSERT stores them.
func TestCopyEdgeValues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, now := range []time.Time{edgeNow, time.Date(250000, 6, 1, 12, 0, 0, 123_456_789, time.UTC)} {
		pool := testdb.New(t)
		r, err := New(Options{Now: func() time.Time { return now }, RetentionDays: 200_000_000, NullIPSources: []string{}})
		require.NoError(t, err)
		times := []time.Time{
			{},
			time.Date(-4000, 1, 1, 0, 0, 0, 1_000_000, time.UTC), // 4001 BC
			time.Date(0, 12, 31, 23, 59, 59, 999_000_000, time.UTC),
			time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
			time.Date(1969, 12, 31, 23, 59, 59, 999_000_000, time.UTC),
			time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC),
			time.Date(1999, 12, 31, 23, 59, 59, 999_000_000, time.UTC),
			time.Date(2000, 1, 1, 0, 0, 0, 1_000_000, time.UTC),
			time.Date(2000, 1, 1, 0, 0, 0, 0, time.FixedZone("x", 5*3600+1800)),
			now.Add(4 * time.Minute),
		}
		ips := []string{"", "0.0.0.0", "255.255.255.255", "::", "::1", "::ffff:0.0.0.0", "::1.2.3.4",
			"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1", "2001:db8::", "64:ff9b::192.0.2.33", " 10.0.0.1 "}
		var es []Event
		for i := range max(len(times), len(ips)) {
			e := edgeEvent(i, 0)
			e.OccurredAt = times[i%len(times)]
			e.IP = ips[i%len(ips)]
			switch i % 4 {
			case 0: // empty: all NULL, flat ''
				e.Actor = Actor{Type: "system"}
				e.Resource = Resource{}
				e.RequestID = ""
				e.Details = map[string]any{}
			case 1:
				e.UserAgent = "   " // kept as is: not NULL, not ''
				e.Details = map[string]any{"": ""}
			case 2:
				e.Resource = Resource{Type: "ticket", IDs: map[string]any{}}
				e.Actor.Name = "Zoë 😀 \u2028"
			}
			es = append(es, e)
		}
		rows, err := r.normaliseAll(ctx, es)
		require.NoError(t, err)
		require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return r.RecordBatch(ctx, tx, es) }))
		requireStored(t, pool, rows)

		// Record's INSERT stores the same, column for column.
		require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for _, e := range es {
				if err := r.Record(ctx, tx, e); err != nil {
					return err
				}
			}
			return nil
		}))
		var differ int
		require.NoError(t, pool.QueryRow(ctx, `
SELECT count(*) FROM (
    SELECT id FROM audit_outbox GROUP BY id
    HAVING count(*) <> 2 OR count(DISTINCT (workspace_id, occurred_at, recorded_at, action, actor_type,
        actor_id, actor_email, actor_name, resource_type, resource_ids, resource_ids_flat, source,
        ip, user_agent, request_id, details)) <> 1) d`).Scan(&differ))
		require.Zero(t, differ, "now %v: events stored differently by COPY and by INSERT", now)

		// The far times are the instants meant.
		var bc, y1 string
		require.NoError(t, pool.QueryRow(ctx, `
SELECT (SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS BC') FROM audit_outbox WHERE id = $1 LIMIT 1),
       (SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS BC') FROM audit_outbox WHERE id = $2 LIMIT 1)`,
			es[1].ID, es[2].ID).Scan(&bc, &y1))
		require.Equal(t, "4001-01-01 00:00:00.001 BC", bc)
		require.Equal(t, "0001-12-31 23:59:59.999 BC", y1)
	}
}

// slowOutbox makes every row written into audit_outbox take a few
// milliseconds on the server, so a COPY is still running when its context
// ends.
func slowOutbox(t *testing.T, pool *pgxpool.Pool, seconds float64) {
	t.Helper()
	_, err := pool.Exec(context.Background(), fmt.Sprintf(`
CREATE FUNCTION review_slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(%g); RETURN NEW; END $$;
CREATE TRIGGER review_slow BEFORE INSERT ON audit_outbox FOR EACH ROW EXECUTE FUNCTION review_slow()`, seconds))
	require.NoError(t, err)
}

// TestCopyCancelled: the context cancelled while RecordBatch's COPY
// is sending (the server reads slowly: the socket fills) or while it waits
// for the server's answer: an error surfaces promptly,
// no row is kept, and the pool neither keeps the connection held nor hands
// it out again unusable. On a connection the caller keeps, it is closed
// rather than left mid-COPY.
func TestCopyCancelled(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		n, pad int
		sleep  float64
	}{
		{"sending", 600, 30000, 0.005},
		{"awaiting", 40, 10, 0.05},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := testdb.New(t)
			slowOutbox(t, pool, c.sleep)
			r := edgeRecorder(t, 0)
			es := make([]Event, c.n)
			for i := range es {
				es[i] = edgeEvent(i, c.pad)
			}

			rows, err := r.normaliseAll(ctx, es)
			require.NoError(t, err)
			// write is RecordBatch, or (old) pgx.CopyFrom as RecordBatch
			// wrote before, for comparison.
			write := func(ctx context.Context, tx pgx.Tx, old bool) error {
				if old {
					_, err := tx.CopyFrom(ctx, pgx.Identifier{"audit_outbox"}, pgxColumns, newPgxSource(rows))
					return err
				}
				return r.RecordBatch(ctx, tx, es)
			}
			for _, kept := range []bool{false, true} {
				for _, old := range []bool{false, true} {
					var tx pgx.Tx
					var conn *pgx.Conn
					var err error
					if kept {
						conn, err = pgx.Connect(ctx, pool.Config().ConnConfig.ConnString())
						require.NoError(t, err)
						defer conn.Close(ctx)
						tx, err = conn.Begin(ctx)
					} else {
						tx, err = pool.Begin(ctx)
					}
					require.NoError(t, err)
					defer func() { _ = tx.Rollback(ctx) }()
					cctx, cancel := context.WithCancel(ctx)
					time.AfterFunc(300*time.Millisecond, cancel)
					start := time.Now()
					err = write(cctx, tx, old)
					took := time.Since(start)
					cancel()
					require.Error(t, err, "kept %v old %v", kept, old)
					// pgconn reports the cancellation either as the
					// context's error or as the closed socket's,
					// whichever its goroutines see first, for both
					// write paths: only an error is required here.
					t.Logf("kept %v old %v: context.Canceled in chain %v: %v", kept, old, errors.Is(err, context.Canceled), err)
					require.Less(t, took, 2*time.Second, "kept %v old %v: the cancellation took %v to surface", kept, old, took)
					_ = tx.Rollback(ctx)
					if kept && !conn.IsClosed() {
						require.Equal(t, byte('I'), conn.PgConn().TxStatus())
						require.NoError(t, conn.Ping(ctx))
					}
				}
			}
			require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == 0 }, 5*time.Second, 10*time.Millisecond)
			for range int(pool.Stat().MaxConns()) + 2 {
				var n int
				require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_outbox`).Scan(&n))
				require.Zero(t, n)
			}
		})
	}
}

// TestCopyRefusedMidStream: the server refusing a row several blocks
// into the COPY: the error is the server's, the transaction rolls back
// cleanly and the connection is usable afterwards.
func TestCopyRefusedMidStream(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	_, err := pool.Exec(ctx, `ALTER TABLE audit_outbox ADD CONSTRAINT review_refuse CHECK (request_id <> 'req_150')`)
	require.NoError(t, err)
	r := edgeRecorder(t, 0)
	es := make([]Event, 400)
	for i := range es {
		es[i] = edgeEvent(i, 20000)
	}
	pc, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer pc.Release()
	err = pgx.BeginFunc(ctx, pc.Conn(), func(tx pgx.Tx) error { return r.RecordBatch(ctx, tx, es) })
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "%v", err)
	require.Equal(t, "23514", pgErr.Code)
	require.ErrorContains(t, err, "copying 400 audit events to outbox")
	require.Equal(t, byte('I'), pc.Conn().PgConn().TxStatus())
	require.NoError(t, pgx.BeginFunc(ctx, pc.Conn(), func(tx pgx.Tx) error { return r.RecordBatch(ctx, tx, es[:100]) }))
	var n int
	require.NoError(t, pc.QueryRow(ctx, `SELECT count(*) FROM audit_outbox`).Scan(&n))
	require.Equal(t, 100, n)
}
