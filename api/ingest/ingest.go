// Package ingest serves POST /v1/events: other services send audit events,
// one object, a {"events": [...]} batch or NDJSON, and each request is
// recorded atomically into the outbox in one transaction.
//
// Ingested events describe actions of the sending service's users, so they
// take nothing from the HTTP request but the workspace (from the key): not
// the service's IP, user agent, request id or the key as actor. An event
// without an actor is refused, never given an invented one.
//
// Retrying a request whose answer was lost (a 503 after COMMIT was sent, a
// timeout) is safe only for events that carry their own id and occurred_at:
// the store keeps one event per (workspace_id, occurred_at, id).
package ingest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/dberr"
	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/outbox"
)

// Defaults of Config.
const (
	MaxBatchDefault     = 1000
	MaxBodyBytesDefault = 5 << 20
	TimeoutDefault      = 30 * time.Second
)

// Media types accepted by POST /v1/events.
const (
	MediaJSON   = "application/json"
	MediaNDJSON = "application/x-ndjson"
)

// Config configures the ingest handler. Zero values take the defaults.
type Config struct {
	// MaxBatch is the most events one request may carry
	// (ingest.max_batch). Default 1000.
	MaxBatch int
	// MaxBodyBytes is the largest request body accepted
	// (ingest.max_body_bytes). Default 5 MiB.
	MaxBodyBytes int64
	// Timeout bounds the database work of one request, from BEGIN to
	// COMMIT; reading the body is bounded by the server's ReadTimeout.
	// Default 30s.
	Timeout time.Duration
}

// Waker is told after each commit that the outbox has new rows, so the relay
// moves them promptly instead of at its next poll.
type Waker interface{ Wake() }

// Deps are what the handler uses. Pool, Recorder and Logger are required;
// Waker is optional.
type Deps struct {
	Pool     *pgxpool.Pool
	Recorder *outbox.Recorder
	Logger   *slog.Logger
	Waker    Waker
}

// Handler serves POST /events.
type Handler struct {
	cfg  Config
	deps Deps
}

// New returns a Handler with cfg's defaults applied and checked.
func New(cfg Config, deps Deps) (*Handler, error) {
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = MaxBatchDefault
	}
	if cfg.MaxBatch < 1 {
		return nil, fmt.Errorf("ingest: MaxBatch must be at least 1, got %d", cfg.MaxBatch)
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = MaxBodyBytesDefault
	}
	if cfg.MaxBodyBytes < 2 {
		return nil, fmt.Errorf("ingest: MaxBodyBytes must be at least 2, got %d", cfg.MaxBodyBytes)
	}
	// The NDJSON reader sizes its line buffer from it; keep it addressable.
	if cfg.MaxBodyBytes > 1<<30 {
		return nil, fmt.Errorf("ingest: MaxBodyBytes must be at most 1 GiB, got %d", cfg.MaxBodyBytes)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = TimeoutDefault
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("ingest: Timeout must be positive, got %s", cfg.Timeout)
	}
	if deps.Pool == nil {
		return nil, errors.New("ingest: Deps.Pool is required")
	}
	if deps.Recorder == nil {
		return nil, errors.New("ingest: Deps.Recorder is required")
	}
	if deps.Logger == nil {
		return nil, errors.New("ingest: Deps.Logger is required")
	}
	return &Handler{cfg: cfg, deps: deps}, nil
}

// Register adds POST /events, requiring the events:write scope, to r, which
// must already authenticate keys (the /v1 group).
func (h *Handler) Register(r gin.IRouter) {
	r.POST("/events", auth.Require(auth.ScopeWrite), h.post)
}

// accepted is the 202 answer.
type accepted struct {
	Accepted int      `json:"accepted"`
	IDs      []string `json:"ids"`
}

// problem is a refusal of the request before anything is written.
type problem struct {
	status  int
	code    string
	message string
	field   string
}

func (p *problem) Error() string { return p.message }

func badRequest(field, format string, args ...any) *problem {
	return &problem{status: http.StatusBadRequest, code: httperr.CodeInvalid, message: fmt.Sprintf(format, args...), field: field}
}

// batchBody marks how the events arrived, which decides how errors name
// them.
type batchBody struct {
	events []outbox.Event
	single bool  // one event object: fields have no index
	lines  []int // NDJSON: the line of each event, for messages
}

func (h *Handler) post(c *gin.Context) {
	// auth.Require, in front of this handler (Register), guarantees the key.
	key, _ := auth.KeyFrom(c)
	body, prob := h.readEvents(c, key)
	if prob != nil {
		httperr.Abort(c, prob.status, prob.code, prob.message, prob.field)
		return
	}
	ids, err := h.record(c.Request.Context(), key, body.events)
	if ve, ok := outbox.AsValidationError(err); ok {
		if body.single {
			ve.Index = -1
		}
		msg := ve.Message
		if body.lines != nil && ve.Index >= 0 && ve.Index < len(body.lines) {
			msg = fmt.Sprintf("line %d: %s", body.lines[ve.Index], msg)
		}
		httperr.Abort(c, http.StatusBadRequest, httperr.CodeInvalid, msg, ve.FieldPath())
		return
	}
	if err != nil {
		if dberr.Classify(err) == dberr.Unavailable {
			h.deps.Logger.Warn("ingest: database unavailable", "error", err, "events", len(body.events))
		} else {
			h.deps.Logger.Error("ingest: recording events failed", "error", err, "events", len(body.events))
		}
		dberr.Abort(c, err, "recording events")
		return
	}
	if h.deps.Waker != nil {
		h.deps.Waker.Wake()
	}
	c.JSON(http.StatusAccepted, accepted{Accepted: len(ids), IDs: ids})
}

// record writes events in one transaction: all or none.
func (h *Handler) record(ctx context.Context, key auth.Key, events []outbox.Event) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	// Replace the request's audit context: the key's workspace is the only
	// thing an ingested event inherits. A zero actor in the context masks
	// the api_key actor the auth middleware put there.
	ctx = outbox.WithRequestInfo(ctx, outbox.RequestInfo{WorkspaceID: key.WorkspaceID})
	ctx = outbox.WithActor(ctx, outbox.Actor{})

	tx, err := h.deps.Pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("beginning ingest transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	ids, err := h.deps.Recorder.RecordBatchIDs(ctx, tx, events)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("committing %d ingested events: %w", len(events), err)
	}
	return ids, nil
}

// readEvents reads and decodes the body by its media type, checking sizes,
// counts and workspaces. Nothing is written yet.
func (h *Handler) readEvents(c *gin.Context, key auth.Key) (batchBody, *problem) {
	if enc := strings.TrimSpace(c.GetHeader("Content-Encoding")); enc != "" && !strings.EqualFold(enc, "identity") {
		return batchBody{}, &problem{http.StatusUnsupportedMediaType, httperr.CodeUnsupportedMedia,
			"Content-Encoding " + httperr.Quote(enc) + " is not supported; send the body uncompressed", ""}
	}
	media, params, err := mime.ParseMediaType(c.GetHeader("Content-Type"))
	if err == nil && media != MediaJSON && media != MediaNDJSON {
		err = errors.New("unsupported")
	}
	if cs, ok := params["charset"]; err == nil && ok && !strings.EqualFold(cs, "utf-8") {
		err = errors.New("unsupported charset")
	}
	if err != nil {
		return batchBody{}, &problem{http.StatusUnsupportedMediaType, httperr.CodeUnsupportedMedia,
			"Content-Type must be " + MediaJSON + " or " + MediaNDJSON + " (UTF-8)", ""}
	}
	if c.Request.ContentLength > h.cfg.MaxBodyBytes {
		return batchBody{}, h.bodyTooLarge()
	}
	r := http.MaxBytesReader(c.Writer, c.Request.Body, h.cfg.MaxBodyBytes)

	var body batchBody
	var prob *problem
	if media == MediaNDJSON {
		body, prob = h.readNDJSONBody(r, key)
	} else {
		body, prob = h.readJSONBody(r, key)
	}
	if prob == nil && len(body.events) == 0 {
		prob = badRequest("events", "the request holds no events")
	}
	return body, prob
}

func (h *Handler) bodyTooLarge() *problem {
	return &problem{http.StatusRequestEntityTooLarge, httperr.CodeTooLarge,
		fmt.Sprintf("the request body is larger than %d bytes (ingest.max_body_bytes)", h.cfg.MaxBodyBytes), ""}
}

func (h *Handler) batchTooLarge() *problem {
	return &problem{http.StatusRequestEntityTooLarge, httperr.CodeTooLarge,
		fmt.Sprintf("a request may carry at most %d events (ingest.max_batch)", h.cfg.MaxBatch), "events"}
}

// readProblem turns a body read error into a refusal.
func (h *Handler) readProblem(err error) *problem {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) || errors.Is(err, bufio.ErrTooLong) {
		return h.bodyTooLarge()
	}
	return badRequest("", "the request body could not be read: %v", err)
}

// readJSONBody reads one event object or {"events": [...]}, in one pass:
// the batch's events are decoded in place (outbox.DecodeEventFrom) as the
// array is walked, rather than the body being decoded into generic values
// first.
func (h *Handler) readJSONBody(r io.Reader, key auth.Key) (batchBody, *problem) {
	data, err := io.ReadAll(r)
	if err != nil {
		return batchBody{}, h.readProblem(err)
	}
	if !utf8.Valid(data) {
		return batchBody{}, badRequest("", "the request body is not valid UTF-8")
	}
	notObject := badRequest("", `the request body must be a JSON object: one event, or {"events": [...]}`)
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return batchBody{}, notObject
	}
	first, i, isKey := readKey(data, skipSpace(data, i+1))
	if !isKey || first != "events" {
		// One event object (or a batch whose "events" is not its first
		// member: its first member is then not a field of a batch).
		e, prob := decodeOne(data, -1, key)
		if prob != nil && prob.field == "events" && isKey {
			prob = badRequest(first, `is not a field of a batch; a batch is {"events": [...]}`)
		}
		if prob != nil {
			return batchBody{}, prob
		}
		return batchBody{events: []outbox.Event{e}, single: true}, nil
	}
	notArray := badRequest("events", "must be an array of events")
	if i = skipSpace(data, i); i >= len(data) || data[i] != ':' {
		return batchBody{}, notObject
	}
	if i = skipSpace(data, i+1); i >= len(data) || data[i] != '[' {
		return batchBody{}, notArray
	}
	body := batchBody{events: make([]outbox.Event, 0, min(h.cfg.MaxBatch, 1+len(data)/256))}
	if i = skipSpace(data, i+1); i < len(data) && data[i] == ']' {
		i++
	} else {
		for index := 0; ; index++ {
			if index >= h.cfg.MaxBatch {
				return batchBody{}, h.batchTooLarge()
			}
			e, n, err := outbox.DecodeEventFrom(data[i:])
			if err != nil {
				return batchBody{}, decodeProblem(err, index)
			}
			if prob := applyWorkspace(&e, index, key); prob != nil {
				return batchBody{}, prob
			}
			body.events = append(body.events, e)
			if i = skipSpace(data, i+n); i >= len(data) {
				return batchBody{}, notArray
			}
			if data[i] == ']' {
				i++
				break
			}
			if data[i] != ',' {
				return batchBody{}, notArray
			}
			i = skipSpace(data, i+1)
		}
	}
	if i = skipSpace(data, i); i < len(data) && data[i] == ',' {
		if name, _, ok := readKey(data, skipSpace(data, i+1)); ok {
			return batchBody{}, badRequest(name, `is not a field of a batch; a batch is {"events": [...]}`)
		}
		return batchBody{}, notObject
	}
	if i >= len(data) || data[i] != '}' || skipSpace(data, i+1) != len(data) {
		return batchBody{}, notObject
	}
	return body, nil
}

// skipSpace returns the index of the first byte at or after i that is not
// JSON whitespace.
func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// readKey reads the JSON string at data[i] and returns its value and the
// index after it; ok is false when there is no well-formed string there.
func readKey(data []byte, i int) (key string, next int, ok bool) {
	if i >= len(data) || data[i] != '"' {
		return "", i, false
	}
	escaped := false
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			if !escaped {
				return string(data[i+1 : j]), j + 1, true
			}
			// Rare: let encoding/json decode the escapes.
			if err := json.Unmarshal(data[i:j+1], &key); err != nil {
				return "", i, false
			}
			return key, j + 1, true
		}
	}
	return "", i, false
}

// readNDJSONBody reads one event per line, streaming.
func (h *Handler) readNDJSONBody(r io.Reader, key auth.Key) (batchBody, *problem) {
	var body batchBody
	body.lines = []int{}
	err := readNDJSON(r, int(h.cfg.MaxBodyBytes), func(line int, data []byte) error {
		i := len(body.events)
		if i >= h.cfg.MaxBatch {
			return h.batchTooLarge()
		}
		e, prob := decodeOne(data, i, key)
		if prob != nil {
			prob.message = fmt.Sprintf("line %d: %s", line, prob.message)
			return prob
		}
		body.events = append(body.events, e)
		body.lines = append(body.lines, line)
		return nil
	})
	var prob *problem
	if errors.As(err, &prob) {
		return batchBody{}, prob
	}
	if err != nil {
		return batchBody{}, h.readProblem(err)
	}
	return body, nil
}

// decodeOne decodes the event at index (-1: a single-object body) and
// applies the key's workspace.
func decodeOne(data []byte, index int, key auth.Key) (outbox.Event, *problem) {
	e, err := outbox.DecodeEvent(data)
	if err != nil {
		return e, decodeProblem(err, index)
	}
	return e, applyWorkspace(&e, index, key)
}

// decodeProblem is the refusal for a decoding error of the event at index.
func decodeProblem(err error, index int) *problem {
	ve, ok := outbox.AsValidationError(err)
	if !ok {
		return badRequest(fieldAt(index, "event"), "%v", err)
	}
	ve.Index = index
	return badRequest(ve.FieldPath(), "%s", ve.Message)
}

// applyWorkspace defaults the event's workspace to the key's and refuses
// another one.
func applyWorkspace(e *outbox.Event, index int, key auth.Key) *problem {
	ws := strings.TrimSpace(e.WorkspaceID)
	switch {
	case ws == "":
		e.WorkspaceID = key.WorkspaceID
	case ws != key.WorkspaceID:
		return &problem{http.StatusForbidden, httperr.CodeForbidden,
			"the API key belongs to another workspace; it cannot write to " + httperr.Quote(ws), fieldAt(index, "workspace_id")}
	}
	return nil
}

func fieldAt(index int, field string) string {
	if index < 0 {
		return field
	}
	return fmt.Sprintf("events[%d].%s", index, field)
}
