package outbox

import (
	"context"
	"encoding/json"
	"fmt"
)

// RequestInfo is what request middleware knows about where an action came
// from. Empty fields are unknown.
type RequestInfo struct {
	WorkspaceID string `json:"workspace_id,omitempty"`
	Source      string `json:"source,omitempty"`
	IP          string `json:"ip,omitempty"`
	UserAgent   string `json:"user_agent,omitempty"`
	RequestID   string `json:"request_id,omitempty"`
}

type actorKey struct{}
type requestKey struct{}

// WithActor returns a context whose recorded events name a as their actor
// unless an event sets its own.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom returns the actor put in ctx by WithActor.
func ActorFrom(ctx context.Context) (Actor, bool) {
	a, ok := ctx.Value(actorKey{}).(Actor)
	return a, ok
}

// WithRequestInfo returns a context whose recorded events take their
// workspace, source, IP, user agent and request id from info unless they set
// their own.
func WithRequestInfo(ctx context.Context, info RequestInfo) context.Context {
	return context.WithValue(ctx, requestKey{}, info)
}

// RequestInfoFrom returns the request info put in ctx by WithRequestInfo.
func RequestInfoFrom(ctx context.Context) (RequestInfo, bool) {
	i, ok := ctx.Value(requestKey{}).(RequestInfo)
	return i, ok
}

// captured is the serialised form of an audit context; V lets the format
// evolve without breaking payloads of jobs already queued.
type captured struct {
	V       int          `json:"v"`
	Actor   *Actor       `json:"actor,omitempty"`
	Request *RequestInfo `json:"request,omitempty"`
}

const capturedVersion = 1

// Capture serialises the audit context of ctx (actor and request info) so a
// background job can keep it in its payload and Restore it on every attempt.
func Capture(ctx context.Context) ([]byte, error) {
	c := captured{V: capturedVersion}
	if a, ok := ActorFrom(ctx); ok {
		c.Actor = &a
	}
	if i, ok := RequestInfoFrom(ctx); ok {
		c.Request = &i
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("capturing audit context: %w", err)
	}
	return b, nil
}

// Restore returns ctx carrying the audit context that Capture serialised.
func Restore(ctx context.Context, data []byte) (context.Context, error) {
	var c captured
	if err := json.Unmarshal(data, &c); err != nil {
		return ctx, fmt.Errorf("restoring audit context: %w", err)
	}
	if c.V != capturedVersion {
		return ctx, fmt.Errorf("restoring audit context: unsupported version %d", c.V)
	}
	if c.Actor != nil {
		ctx = WithActor(ctx, *c.Actor)
	}
	if c.Request != nil {
		ctx = WithRequestInfo(ctx, *c.Request)
	}
	return ctx, nil
}

// fromContext fills the fields e leaves unset from ctx.
func fromContext(ctx context.Context, e Event) Event {
	c := contextOf(ctx)
	return c.fill(e)
}

// auditContext is what ctx carries for recording, looked up once per batch
// rather than once per event.
type auditContext struct {
	actor      Actor
	hasActor   bool
	request    RequestInfo
	hasRequest bool
}

func contextOf(ctx context.Context) auditContext {
	var c auditContext
	c.actor, c.hasActor = ActorFrom(ctx)
	c.request, c.hasRequest = RequestInfoFrom(ctx)
	return c
}

// fill sets the fields e leaves unset from c.
func (c *auditContext) fill(e Event) Event {
	if e.Actor.IsZero() && c.hasActor {
		e.Actor = c.actor
	}
	if i := &c.request; c.hasRequest {
		if e.WorkspaceID == "" {
			e.WorkspaceID = i.WorkspaceID
		}
		if e.Source == "" {
			e.Source = i.Source
		}
		if e.IP == "" {
			e.IP = i.IP
		}
		if e.UserAgent == "" {
			e.UserAgent = i.UserAgent
		}
		if e.RequestID == "" {
			e.RequestID = i.RequestID
		}
	}
	return e
}
