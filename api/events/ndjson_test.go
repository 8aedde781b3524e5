package events

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/gowebpki/jcs"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/outbox"
	"github.com/auditlog/auditlog/outbox/integrity"
	"github.com/auditlog/auditlog/outbox/relay"
)

// TestNDJSONExportIsTheChain exports with format=ndjson and checks, for
// random hostile events moved by the real relay: every line is the query
// API's event (byte-identical once both are RFC 8785 canonical, so the SQL
// rendering the chain hashes is the API's shape), lines come in seq order,
// each line's hash is SHA-256(prev_hash || canonical bytes), the whole
// export verifies, and the export is recorded with its format.
func TestNDJSONExportIsTheChain(t *testing.T) {
	t.Parallel()
	pool := newTestDB(t)
	in, _ := genDataset(rand.New(rand.NewPCG(timeSeed(t), 7)), 400)
	rec, err := outbox.New(outbox.Options{Now: func() time.Time { return testNow }})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return rec.RecordBatch(ctx, tx, in) }))
	rl, err := relay.New(pool, relay.Config{BatchSize: 37, Logger: discardLogger()})
	require.NoError(t, err)
	_, err = rl.Drain(ctx)
	require.NoError(t, err)

	h := newHandlers(t, pool, Config{Recorder: rec})
	r := testRouter(h, readKey("ws_a"))
	api := map[string]Event{}
	q := url.Values{paramLimit: {"1000"}}
	for {
		p := getPage(t, r, q)
		for _, e := range p.Data {
			api[e.ID] = e
		}
		if p.NextCursor == nil {
			break
		}
		q.Set(paramCursor, *p.NextCursor)
	}
	require.NotEmpty(t, api)

	w := do(r, "/v1/events/export", url.Values{"format": {"ndjson"}})
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	require.Equal(t, "application/x-ndjson", w.Header().Get("Content-Type"))
	require.Contains(t, w.Header().Get("Content-Disposition"), ".ndjson")
	body := w.Body.Bytes()

	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	var lines int
	var lastSeq int64
	for sc.Scan() {
		lines++
		rec, err := integrity.ParseRecord(sc.Bytes())
		require.NoError(t, err, "line %d: %s", lines, sc.Text())
		require.Greater(t, rec.Seq, lastSeq, "seq order")
		lastSeq = rec.Seq
		require.Equal(t, rec.Hash, integrity.Link(rec.PrevHash, rec.Body), "line %d", lines)

		var idOnly struct{ ID string }
		require.NoError(t, json.Unmarshal(sc.Bytes(), &idOnly))
		e, ok := api[idOnly.ID]
		require.True(t, ok, "line %d: event %s is not in the query API's result", lines, idOnly.ID)
		require.Equal(t, rec.Seq, e.Seq)
		e.Seq = 0
		raw, err := json.Marshal(e)
		require.NoError(t, err)
		var obj map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(raw, &obj))
		delete(obj, "seq")
		raw, err = json.Marshal(obj)
		require.NoError(t, err)
		want, err := jcs.Transform(raw)
		require.NoError(t, err)
		require.Equal(t, string(want), string(rec.Body), "line %d: the chain's bytes differ from the API's event", lines)
	}
	require.NoError(t, sc.Err())
	require.Equal(t, len(api), lines)

	rep, err := integrity.Verify(bytes.NewReader(body), nil, nil)
	require.NoError(t, err)
	require.True(t, rep.OK(), "%v", rep.Break)
	require.EqualValues(t, lines, rep.Events)

	exports := exportEvents(t, pool)
	require.Len(t, exports, 1)
	require.Equal(t, "ndjson", exports[0].Details["format"])
	require.Equal(t, strconv.Itoa(lines), strconv.FormatFloat(exports[0].Details["rows"].(float64), 'f', -1, 64))
}
