package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

// requestTimeout bounds one HTTP request of the test clients; every answer
// the tests wait for (a 503 included) must come well within it.
const requestTimeout = 30 * time.Second

// wireEvent is an event as POST /v1/events takes it. Every event carries its
// own id and occurred_at, so resending a batch is idempotent.
type wireEvent struct {
	ID         string         `json:"id"`
	OccurredAt string         `json:"occurred_at"`
	Action     string         `json:"action"`
	Actor      wireActor      `json:"actor"`
	Source     string         `json:"source"`
	Details    map[string]any `json:"details,omitempty"`
}

type wireActor struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

// batch is one ingest request's events.
type batch struct {
	ID     string
	Events []wireEvent
}

// IDs are the event ids of the batch.
func (b batch) IDs() []string {
	ids := make([]string, len(b.Events))
	for i, e := range b.Events {
		ids[i] = e.ID
	}
	return ids
}

// newBatch makes n events of action, occurred just now (milliseconds, as
// stored), each naming the batch in its details.
func newBatch(action string, n int) batch {
	b := batch{ID: uuid.NewString(), Events: make([]wireEvent, n)}
	at := time.Now().UTC().Truncate(time.Millisecond)
	for i := range b.Events {
		b.Events[i] = wireEvent{
			ID:         uuid.NewString(),
			OccurredAt: at.Add(-time.Duration(i) * time.Millisecond).Format("2006-01-02T15:04:05.000Z"),
			Action:     action,
			Actor:      wireActor{Type: "service", ID: "e2e-loadgen"},
			Source:     "api",
			Details:    map[string]any{"batch": b.ID, "i": i},
		}
	}
	return b
}

// client talks to one or more services with one API key.
type client struct {
	http *http.Client
	key  string
}

// newClient returns a client with its own connection pool, closed at cleanup.
func newClient(t testing.TB, key string) *client {
	tr := &http.Transport{MaxIdleConnsPerHost: 32, MaxConnsPerHost: 0}
	t.Cleanup(tr.CloseIdleConnections)
	return &client{http: &http.Client{Timeout: requestTimeout, Transport: tr}, key: key}
}

// answer is the outcome of one request.
type answer struct {
	Status  int    // 0 when no HTTP answer came (Err is set)
	Code    string // error.code of a JSON error body
	Message string
	Body    []byte
	Err     error
	// Mismatch is set when a 202 does not list the ids sent.
	Mismatch string
	Start    time.Time
	Elapsed  time.Duration
}

func (a answer) String() string {
	if a.Err != nil {
		return fmt.Sprintf("no answer after %s: %v", a.Elapsed, a.Err)
	}
	if a.Mismatch != "" {
		return a.Mismatch
	}
	return fmt.Sprintf("%d %s after %s: %.300s", a.Status, a.Code, a.Elapsed, a.Body)
}

// do sends a request and reads the whole answer.
func (c *client) do(ctx context.Context, method, url, contentType string, body []byte) answer {
	a := answer{Start: time.Now()}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		a.Err = err
		a.Elapsed = time.Since(a.Start)
		return a
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		a.Err = err
		a.Elapsed = time.Since(a.Start)
		return a
	}
	defer resp.Body.Close()
	a.Status = resp.StatusCode
	a.Body, a.Err = io.ReadAll(resp.Body)
	if a.Err != nil {
		a.Status = 0 // a cut answer is no answer
	}
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if resp.StatusCode >= 300 && json.Unmarshal(a.Body, &e) == nil {
		a.Code, a.Message = e.Error.Code, e.Error.Message
	}
	a.Elapsed = time.Since(a.Start)
	return a
}

// accepted reports a 202 naming every event sent.
func (a answer) accepted() bool { return a.Status == http.StatusAccepted && a.Mismatch == "" }

// post sends b to POST /v1/events of baseURL.
func (c *client) post(ctx context.Context, baseURL string, b batch) answer {
	body, err := json.Marshal(map[string]any{"events": b.Events})
	if err != nil {
		return answer{Err: err}
	}
	a := c.do(ctx, http.MethodPost, baseURL+"/v1/events", "application/json", body)
	if a.Status == http.StatusAccepted {
		// The answer must name exactly the events sent, in order.
		var got struct {
			Accepted int      `json:"accepted"`
			IDs      []string `json:"ids"`
		}
		if err := json.Unmarshal(a.Body, &got); err != nil || got.Accepted != len(b.Events) || !slices.Equal(got.IDs, b.IDs()) {
			a.Mismatch = fmt.Sprintf("202 does not name the %d events sent (err %v)", len(b.Events), err)
		}
	}
	return a
}

// get sends GET baseURL+path.
func (c *client) get(ctx context.Context, baseURL, path string) answer {
	return c.do(ctx, http.MethodGet, baseURL+path, "", nil)
}

// attempt is one ingest request of an ingestRun.
type attempt struct {
	Batch  batch
	Target string
	answer
}

// ingestRun is a set of workers posting batches until stopped, recording
// every attempt. With a rate, workers take one token per request from a
// ticker; tokens not taken in time are counted as missed.
type ingestRun struct {
	stop   chan struct{}
	wg     sync.WaitGroup
	tokens chan struct{}

	mu       sync.Mutex
	attempts []attempt
	missed   int
	inFlight int
}

// ingestOptions configure startIngest.
type ingestOptions struct {
	Targets   []string // base URLs, used round robin per worker
	Workers   int
	BatchSize int
	Action    string
	// Pause between a worker's requests; 0 for none.
	Pause time.Duration
	// BatchesPerSecond, when set, paces all workers together instead.
	BatchesPerSecond float64
	// StopOnError makes a worker stop after its first request without a 202
	// (used around a kill, where every later request would fail too).
	StopOnError bool
}

// startIngest starts the workers; Stop ends them and returns the attempts.
func startIngest(c *client, o ingestOptions) *ingestRun {
	r := &ingestRun{stop: make(chan struct{})}
	if o.BatchesPerSecond > 0 {
		r.tokens = make(chan struct{}, o.Workers)
		r.wg.Go(func() {
			// Tokens due are computed from the elapsed time, so a tick
			// dropped under CPU pressure is caught up, not lost.
			began := time.Now()
			issued := 0
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-r.stop:
					return
				case <-tick.C:
				}
				due := int(time.Since(began).Seconds() * o.BatchesPerSecond)
				for ; issued < due; issued++ {
					select {
					case r.tokens <- struct{}{}:
					default:
						r.mu.Lock()
						r.missed++
						r.mu.Unlock()
					}
				}
			}
		})
	}
	for w := range o.Workers {
		target := o.Targets[w%len(o.Targets)]
		r.wg.Go(func() {
			for {
				if r.tokens != nil {
					select {
					case <-r.stop:
						return
					case <-r.tokens:
					}
				} else {
					select {
					case <-r.stop:
						return
					default:
					}
				}
				b := newBatch(o.Action, o.BatchSize)
				r.mu.Lock()
				r.inFlight++
				r.mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
				a := c.post(ctx, target, b)
				cancel()
				r.mu.Lock()
				r.inFlight--
				r.attempts = append(r.attempts, attempt{Batch: b, Target: target, answer: a})
				r.mu.Unlock()
				if o.StopOnError && !a.accepted() {
					return
				}
				if o.Pause > 0 {
					select {
					case <-r.stop:
						return
					case <-time.After(o.Pause):
					}
				}
			}
		})
	}
	return r
}

// Stop ends the workers (each finishes its request in flight) and returns
// every attempt.
func (r *ingestRun) Stop() []attempt {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	r.wg.Wait()
	return r.Attempts()
}

// Attempts returns the attempts so far.
func (r *ingestRun) Attempts() []attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]attempt(nil), r.attempts...)
}

// InFlight is the number of requests sent and not yet answered.
func (r *ingestRun) InFlight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inFlight
}

// Missed is the number of paced requests the workers could not send in time.
func (r *ingestRun) Missed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.missed
}

// acceptedEvents counts the events of 202 attempts.
func acceptedEvents(as []attempt) int {
	n := 0
	for _, a := range as {
		if a.accepted() {
			n += len(a.Batch.Events)
		}
	}
	return n
}

// split separates accepted (202) attempts from the rest.
func split(as []attempt) (accepted, other []attempt) {
	for _, a := range as {
		if a.accepted() {
			accepted = append(accepted, a)
		} else {
			other = append(other, a)
		}
	}
	return accepted, other
}
