package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ingestBatch is one request's worth of events: one workspace (a key
// belongs to one workspace).
type ingestBatch struct {
	ws   string
	n    int
	body []byte  // the JSON body, for HTTP
	rows [][]any // the outbox rows, for raw COPY
}

// ingestStage posts the events to POST /v1/events in batches of --batch
// from --clients concurrent clients, then copies the same rows straight into
// audit_outbox with the same batches and concurrency. The bodies and rows
// are built before the clock starts.
func (b *bench) ingestStage(ctx context.Context) error {
	srv, err := b.server()
	if err != nil {
		return err
	}
	for _, ws := range b.workspaces {
		if _, err := srv.key(ctx, b.pool, ws); err != nil {
			return err
		}
	}
	rs := runs{}
	n := b.cfg.events
	for run := range b.cfg.runs {
		if err := b.resetStore(ctx); err != nil {
			return err
		}
		batches := b.ingestBatches(true)
		var bodyBytes int
		for _, bt := range batches {
			bodyBytes += len(bt.body)
		}
		hd, err := b.phase(ctx, rs, "http", n, func() (time.Duration, error) {
			return b.concurrently(ctx, batches, func(ctx context.Context, bt *ingestBatch) error {
				return b.post(ctx, srv, bt)
			})
		})
		if err != nil {
			return err
		}
		rs.add("body_bytes", float64(bodyBytes)/float64(n))
		if got, err := b.count(ctx, countOutboxSQL); err != nil {
			return err
		} else if got != int64(n) {
			return fmt.Errorf("ingest stored %d events in the outbox, want %d", got, n)
		}

		if _, err := b.pool.Exec(ctx, truncateOutboxSQL); err != nil {
			return fmt.Errorf("truncating audit_outbox: %w", err)
		}
		batches = b.ingestBatches(false)
		cd, err := b.phase(ctx, rs, "copy", n, func() (time.Duration, error) {
			return b.concurrently(ctx, batches, func(ctx context.Context, bt *ingestBatch) error {
				return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
					_, err := tx.CopyFrom(ctx, pgx.Identifier{"audit_outbox"}, outboxColumns, pgx.CopyFromRows(bt.rows))
					return err
				})
			})
		})
		if err != nil {
			return fmt.Errorf("raw COPY into audit_outbox: %w", err)
		}
		b.progress("ingest run %d/%d: HTTP %.0f/s, raw COPY %.0f/s", run+1, b.cfg.runs, perSecond(n, hd), perSecond(n, cd))
	}
	if err := b.resetStore(ctx); err != nil {
		return err
	}
	o := b.out
	o.num("ingest.events", float64(n), 0)
	o.num("ingest.batch", float64(b.cfg.batch), 0)
	o.num("ingest.clients", float64(b.cfg.clients), 0)
	o.num("ingest.body_bytes_per_event", rs.median("body_bytes"), 0)
	o.num("ingest.http_events_per_s", rs.median("http"), 0)
	o.num("ingest.copy_events_per_s", rs.median("copy"), 0)
	o.num("ingest.http_wal_bytes_per_event", rs.median("http_wal"), 0)
	o.num("ingest.copy_wal_bytes_per_event", rs.median("copy_wal"), 0)
	r := median(divide(rs["http"], rs["copy"]))
	o.num("ingest.http_vs_copy", r, 3)
	o.target("ingest_vs_copy", r >= 0.5)
	return nil
}

// ingestBatches generates the stage's events, batch i in workspace
// i mod --workspaces, as JSON bodies (asJSON) or outbox rows.
func (b *bench) ingestBatches(asJSON bool) []*ingestBatch {
	g := newGenerator(b.cfg.seed+1, b.workspaces)
	now := time.Now()
	var out []*ingestBatch
	for done, i := 0, 0; done < b.cfg.events; i++ {
		bt := &ingestBatch{ws: b.workspaces[i%len(b.workspaces)], n: min(b.cfg.batch, b.cfg.events-done)}
		if asJSON {
			bt.body = append(bt.body, `{"events":[`...)
		}
		for j := range bt.n {
			e := g.next(bt.ws, g.within(b.now, pipelineSpan))
			if asJSON {
				if j > 0 {
					bt.body = append(bt.body, ',')
				}
				bt.body = e.appendJSON(bt.body)
			} else {
				bt.rows = append(bt.rows, e.outboxValues(now))
			}
		}
		if asJSON {
			bt.body = append(bt.body, "]}"...)
		}
		done += bt.n
		out = append(out, bt)
	}
	return out
}

// concurrently runs fn over batches from --clients goroutines and returns
// the wall time, or the first error.
func (b *bench) concurrently(ctx context.Context, batches []*ingestBatch, fn func(context.Context, *ingestBatch) error) (time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan *ingestBatch)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	start := time.Now()
	for range b.cfg.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for bt := range work {
				if err := fn(ctx, bt); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
feed:
	for _, bt := range batches {
		select {
		case work <- bt:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	d := time.Since(start)
	if first != nil {
		return 0, first
	}
	return d, ctx.Err()
}

// post sends one batch to POST /v1/events and checks the answer.
func (b *bench) post(ctx context.Context, srv *server, bt *ingestBatch) error {
	key, err := srv.key(ctx, b.pool, bt.ws)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.ts.URL+"/v1/events", bytes.NewReader(bt.body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := srv.client.Do(req)
	if err != nil {
		return fmt.Errorf("POST /v1/events: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("POST /v1/events: reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST /v1/events: %s: %.500s", resp.Status, body)
	}
	var ans struct {
		Accepted int `json:"accepted"`
	}
	if err := json.Unmarshal(body, &ans); err != nil || ans.Accepted != bt.n {
		return fmt.Errorf("POST /v1/events: accepted %d of %d (%v)", ans.Accepted, bt.n, err)
	}
	return nil
}
