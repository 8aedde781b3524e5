package bench

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/auditlog/auditlog/outbox"
)

// The generator makes deterministic synthetic events with realistic shapes:
// details of a few hundred bytes of canonical JSON, two or three resource
// ids, a zipf-skewed mix of actions and users, sources that match the actor.
// Every event exists in four forms built from the same fields: an
// outbox.Event (RecordBatch), an audit_outbox row (raw COPY), an
// audit_events row (bulk load) and the ingest API's JSON. The stored forms
// are built here already canonical, so the raw COPY rows are exactly what
// RecordBatch would store (the package test checks this).

// usersPerWorkspace is how many distinct users act in one workspace.
const usersPerWorkspace = 200

// actionKind is an action with the resource it touches and the keys of its
// resource ids, sorted (the canonical order).
type actionKind struct {
	action   string
	resource string
	idKeys   []string
}

// actionTable lists the actions from the most to the least frequent; the
// generator picks them with a zipf distribution over this order.
var actionTable = []actionKind{
	{"ticket.update", "ticket", []string{"channel", "ticket"}},
	{"ticket.comment", "ticket", []string{"channel", "ticket"}},
	{"ticket.create", "ticket", []string{"channel", "team", "ticket"}},
	{"ticket.close", "ticket", []string{"channel", "ticket"}},
	{"ticket.assign", "ticket", []string{"member", "ticket"}},
	{"member.login", "member", []string{"member", "team"}},
	{"ticket.reopen", "ticket", []string{"channel", "ticket"}},
	{"automation.run", "automation", []string{"automation", "ticket"}},
	{"member.invite", "member", []string{"member", "team"}},
	{"channel.link", "channel", []string{"channel", "team"}},
	{"automation.create", "automation", []string{"automation", "team"}},
	{"member.role_change", "member", []string{"member", "team"}},
	{"setting.update", "setting", []string{"setting", "team"}},
	{"api_key.create", "api_key", []string{"api_key", "team"}},
	{"ticket.delete", "ticket", []string{"channel", "ticket"}},
	{"member.remove", "member", []string{"member", "team"}},
	{"api_key.revoke", "api_key", []string{"api_key", "team"}},
	{"channel.unlink", "channel", []string{"channel", "team"}},
	{"automation.delete", "automation", []string{"automation", "team"}},
	{"workspace.update", "workspace", []string{"team", "workspace"}},
}

var browserAgents = []string{
	"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
	"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
}

var words = []string{
	"customer", "reports", "that", "the", "invoice", "export", "fails", "after", "upgrade",
	"please", "check", "billing", "settings", "for", "this", "account", "and", "reply",
	"urgent", "login", "issue", "on", "mobile", "app", "password", "reset", "link",
	"expired", "refund", "requested", "duplicate", "charge", "shipping", "delayed",
	"warehouse", "tracking", "number", "missing", "integration", "slack", "channel",
	"notifications", "stopped", "working", "since", "yesterday", "escalated", "to",
	"second", "line", "support", "team", "waiting", "feedback", "from", "engineering",
}

var surnames = []string{"Liddell", "Hatter", "March", "Dodgson", "Tenniel", "Carroll", "Pleasance", "Dinah"}
var statuses = []string{"open", "pending", "closed"}
var priorities = []string{"low", "normal", "high", "urgent"}
var tagNames = []string{"billing", "vip", "bug", "refund", "mobile", "sla"}
var settingNames = []string{"sla_hours", "business_hours", "auto_close", "signature", "locale"}
var serviceNames = []string{"billing", "sync", "mailer"}

// genEvent is one generated event in its stored form; empty strings are
// NULL.
type genEvent struct {
	id           uuid.UUID
	workspace    string
	occurredAt   time.Time
	action       string
	actorType    string
	actorID      string
	actorEmail   string
	actorName    string
	resourceType string
	idKeys       []string // sorted
	idVals       []string
	source       string
	ip           netip.Addr // invalid: NULL
	userAgent    string
	requestID    string
	details      string // canonical JSON
}

// generator is a deterministic source of events; not safe for concurrent
// use.
type generator struct {
	rng        *rand.Rand
	workspaces []string
	users      *rand.Zipf
	actions    *rand.Zipf
	buf        []byte
}

// newGenerator returns a generator of events over workspaces whose
// sequence depends only on seed.
func newGenerator(seed uint64, workspaces []string) *generator {
	rng := rand.New(rand.NewPCG(seed, 0x6175646974))
	return &generator{
		rng:        rng,
		workspaces: workspaces,
		users:      rand.NewZipf(rng, 1.2, 4, usersPerWorkspace-1),
		actions:    rand.NewZipf(rng, 1.3, 1.5, uint64(len(actionTable)-1)),
	}
}

// workspace picks a workspace uniformly.
func (g *generator) workspace() string { return g.workspaces[g.rng.IntN(len(g.workspaces))] }

// within returns a millisecond instant uniformly in [end-span, end).
func (g *generator) within(end time.Time, span time.Duration) time.Time {
	return end.Add(-time.Duration(g.rng.Int64N(int64(span)))).UTC().Truncate(time.Millisecond)
}

// next generates an event of workspace ws that occurred at at.
func (g *generator) next(ws string, at time.Time) genEvent {
	r := g.rng
	e := genEvent{workspace: ws, occurredAt: at.UTC().Truncate(time.Millisecond)}
	e.id = g.uuidV7(e.occurredAt)

	kind := actionTable[g.actions.Uint64()]
	e.action = kind.action
	e.resourceType = kind.resource
	e.idKeys = kind.idKeys
	e.idVals = make([]string, len(kind.idKeys))
	for i, k := range kind.idKeys {
		e.idVals[i] = g.idValue(k, ws)
	}

	switch roll := r.Float64(); {
	case roll < 0.85:
		n := int(g.users.Uint64())
		e.actorType = outbox.ActorUser
		e.actorID = "u_" + strconv.Itoa(n)
		e.actorEmail = "user" + strconv.Itoa(n) + "@" + ws + ".example"
		e.actorName = "User" + strconv.Itoa(n) + " " + surnames[n%len(surnames)]
		switch s := r.Float64(); {
		case s < 0.7:
			e.source = "web"
		case s < 0.9:
			e.source = "slack"
		default:
			e.source = "api"
		}
	case roll < 0.93:
		k := r.IntN(5)
		e.actorType = outbox.ActorAPIKey
		e.actorID = "key_" + strconv.Itoa(k)
		e.actorName = "integration " + strconv.Itoa(k)
		e.source = "api"
	case roll < 0.97:
		s := serviceNames[r.IntN(len(serviceNames))]
		e.actorType = outbox.ActorService
		e.actorID = "svc_" + s
		e.actorName = s
		e.source = "workflow"
	default:
		e.actorType = outbox.ActorSystem
		e.source = "system"
	}

	// Only a request made directly by the actor carries an address: slack,
	// workflow and system are the default events.null_ip_sources, which
	// would store NULL anyway.
	switch e.source {
	case "web":
		e.ip = g.ip()
		e.userAgent = browserAgents[r.IntN(len(browserAgents))]
		e.requestID = g.requestID()
	case "api":
		e.ip = g.ip()
		e.userAgent = "acme-sync/2.3.1 (+https://acme.example/bot)"
		e.requestID = g.requestID()
	case "slack":
		e.userAgent = "Slackbot 1.0 (+https://api.slack.com/robots)"
		e.requestID = g.requestID()
	}
	e.details = g.details(e.source)
	return e
}

// uuidV7 returns a version 7 UUID for ms instant t from the generator's
// randomness, so ids are deterministic and sort roughly by time.
func (g *generator) uuidV7(t time.Time) uuid.UUID {
	var u uuid.UUID
	ms := uint64(t.UnixMilli())
	for i := 0; i < 6; i++ {
		u[i] = byte(ms >> (40 - 8*i))
	}
	a, b := g.rng.Uint64(), g.rng.Uint64()
	for i := 6; i < 16; i++ {
		if i < 11 {
			u[i] = byte(a >> (8 * (i - 6)))
		} else {
			u[i] = byte(b >> (8 * (i - 11)))
		}
	}
	u[6] = 0x70 | u[6]&0x0f
	u[8] = 0x80 | u[8]&0x3f
	return u
}

func (g *generator) ip() netip.Addr {
	r := g.rng
	return netip.AddrFrom4([4]byte{byte(11 + r.IntN(212)), byte(r.IntN(256)), byte(r.IntN(256)), byte(1 + r.IntN(254))})
}

func (g *generator) requestID() string {
	return "req_" + strconv.FormatUint(g.rng.Uint64()|1<<63, 16)
}

const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

func (g *generator) idValue(key, ws string) string {
	r := g.rng
	switch key {
	case "ticket":
		return "t_" + strconv.Itoa(1+r.IntN(999_999))
	case "channel":
		b := []byte("C0")
		for range 7 {
			b = append(b, alnum[r.IntN(len(alnum))])
		}
		return string(b)
	case "team":
		return "T0" + strconv.Itoa(100+r.IntN(20))
	case "member":
		return "m_" + strconv.Itoa(r.IntN(usersPerWorkspace))
	case "automation":
		return "auto_" + strconv.Itoa(r.IntN(300))
	case "setting":
		return settingNames[r.IntN(len(settingNames))]
	case "api_key":
		return "key_" + strconv.Itoa(r.IntN(5))
	default: // workspace
		return ws
	}
}

// sentence returns between lo and hi words.
func (g *generator) sentence(b []byte, lo, hi int) []byte {
	n := lo + g.rng.IntN(hi-lo+1)
	for i := range n {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, words[g.rng.IntN(len(words))]...)
	}
	return b
}

// details builds a details object directly in RFC 8785 form: keys sorted,
// no whitespace, strings that need no escaping. 200-450 bytes.
func (g *generator) details(source string) string {
	r := g.rng
	b := g.buf[:0]
	b = append(b, `{"changes":{`...)
	// 1-3 of the changeable fields, in key order.
	fields := []string{"assignee", "priority", "status", "subject", "tags"}
	n := 1 + r.IntN(3)
	picked := 0
	for i, f := range fields {
		left := len(fields) - i
		if picked == n || r.IntN(left) >= n-picked {
			continue
		}
		if picked > 0 {
			b = append(b, ',')
		}
		picked++
		b = append(b, '"')
		b = append(b, f...)
		b = append(b, `":{"from":`...)
		b = g.changeValue(b, f)
		b = append(b, `,"to":`...)
		b = g.changeValue(b, f)
		b = append(b, '}')
	}
	b = append(b, `},"client":{"app_version":"4.`...)
	b = strconv.AppendInt(b, int64(r.IntN(20)), 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(r.IntN(10)), 10)
	b = append(b, `","locale":"en-GB","platform":"`...)
	b = append(b, source...)
	b = append(b, `"},"note":"`...)
	b = g.sentence(b, 8, 24)
	b = append(b, `","ticket_number":`...)
	b = strconv.AppendInt(b, int64(1000+r.IntN(900_000)), 10)
	b = append(b, '}')
	g.buf = b
	return string(b)
}

func (g *generator) changeValue(b []byte, field string) []byte {
	r := g.rng
	switch field {
	case "assignee":
		return strconv.AppendQuote(b, "m_"+strconv.Itoa(r.IntN(usersPerWorkspace)))
	case "priority":
		return strconv.AppendQuote(b, priorities[r.IntN(len(priorities))])
	case "status":
		return strconv.AppendQuote(b, statuses[r.IntN(len(statuses))])
	case "subject":
		b = append(b, '"')
		b = g.sentence(b, 4, 10)
		return append(b, '"')
	default: // tags: a sorted, de-duplicated array
		i, j := r.IntN(len(tagNames)), r.IntN(len(tagNames))
		if i > j {
			i, j = j, i
		}
		b = append(b, '[')
		b = strconv.AppendQuote(b, tagNames[i])
		if j != i {
			b = append(b, ',')
			b = strconv.AppendQuote(b, tagNames[j])
		}
		return append(b, ']')
	}
}

// resourceIDsJSON is the canonical JSON object of the resource ids.
func (e *genEvent) resourceIDsJSON() string {
	b := []byte{'{'}
	for i, k := range e.idKeys {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, k)
		b = append(b, ':')
		b = strconv.AppendQuote(b, e.idVals[i])
	}
	return string(append(b, '}'))
}

// resourceIDsFlat is the flattened form, by the recorder's own rule
// (generation is outside every timed phase).
func (e *genEvent) resourceIDsFlat() string {
	ids := make(map[string]any, len(e.idKeys))
	for i, k := range e.idKeys {
		ids[k] = e.idVals[i]
	}
	flat, err := outbox.FlattenResourceIDs(ids)
	if err != nil {
		panic(fmt.Sprintf("bench: generated resource ids refused: %v", err)) // a generator bug
	}
	return flat
}

// event is the event as an in-app caller would pass it to RecordBatch.
func (e *genEvent) event() outbox.Event {
	ids := make(map[string]any, len(e.idKeys))
	for i, k := range e.idKeys {
		ids[k] = e.idVals[i]
	}
	ev := outbox.Event{
		ID:          e.id.String(),
		WorkspaceID: e.workspace,
		OccurredAt:  e.occurredAt,
		Action:      e.action,
		Actor:       outbox.Actor{Type: e.actorType, ID: e.actorID, Email: e.actorEmail, Name: e.actorName},
		Resource:    outbox.Resource{Type: e.resourceType, IDs: ids},
		Source:      e.source,
		UserAgent:   e.userAgent,
		RequestID:   e.requestID,
		Details:     json.RawMessage(e.details),
	}
	if e.ip.IsValid() {
		ev.IP = e.ip.String()
	}
	return ev
}

// nullable maps "" to NULL.
func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// outboxColumns are the columns of audit_outbox that a raw COPY fills, the
// same that RecordBatch copies.
var outboxColumns = []string{
	"id", "workspace_id", "occurred_at", "recorded_at", "action", "actor_type", "actor_id",
	"actor_email", "actor_name", "resource_type", "resource_ids", "resource_ids_flat",
	"source", "ip", "user_agent", "request_id", "details",
}

// eventsColumns are the columns of audit_events that the bulk load fills.
var eventsColumns = append([]string{"seq"}, outboxColumns...)

// outboxValues is the audit_outbox row of e, recorded at recordedAt.
func (e *genEvent) outboxValues(recordedAt time.Time) []any {
	var ip any
	if e.ip.IsValid() {
		ip = e.ip
	}
	// The id as pgtype.UUID: a uuid.UUID would go through its
	// driver.Valuer as text and fail pgx's binary plan first, handicapping
	// this floor against RecordBatch, which encodes ids in binary.
	return []any{
		pgtype.UUID{Bytes: e.id, Valid: true}, e.workspace, e.occurredAt, recordedAt.UTC().Truncate(time.Millisecond), e.action,
		e.actorType, nullable(e.actorID), nullable(e.actorEmail), nullable(e.actorName),
		nullable(e.resourceType), e.resourceIDsJSON(), e.resourceIDsFlat(), e.source, ip,
		nullable(e.userAgent), nullable(e.requestID), e.details,
	}
}

// eventsValues is the audit_events row of e with seq.
func (e *genEvent) eventsValues(seq int64, recordedAt time.Time) []any {
	return append([]any{seq}, e.outboxValues(recordedAt)...)
}

// appendJSON appends e in the ingest API's JSON shape.
func (e *genEvent) appendJSON(b []byte) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, e.id.String()...)
	b = append(b, `","workspace_id":`...)
	b = appendJSONString(b, e.workspace)
	b = append(b, `,"occurred_at":"`...)
	b = e.occurredAt.AppendFormat(b, outbox.TimeFormat)
	b = append(b, `","action":`...)
	b = appendJSONString(b, e.action)
	b = append(b, `,"actor":{"type":`...)
	b = appendJSONString(b, e.actorType)
	for _, f := range [...]struct{ k, v string }{{"id", e.actorID}, {"email", e.actorEmail}, {"name", e.actorName}} {
		if f.v != "" {
			b = append(b, `,"`...)
			b = append(b, f.k...)
			b = append(b, `":`...)
			b = appendJSONString(b, f.v)
		}
	}
	b = append(b, `},"resource":{"type":`...)
	b = appendJSONString(b, e.resourceType)
	b = append(b, `,"ids":`...)
	b = append(b, e.resourceIDsJSON()...)
	b = append(b, `},"source":`...)
	b = appendJSONString(b, e.source)
	if e.ip.IsValid() {
		b = append(b, `,"ip":"`...)
		b = e.ip.AppendTo(b)
		b = append(b, '"')
	}
	if e.userAgent != "" {
		b = append(b, `,"user_agent":`...)
		b = appendJSONString(b, e.userAgent)
	}
	if e.requestID != "" {
		b = append(b, `,"request_id":`...)
		b = appendJSONString(b, e.requestID)
	}
	b = append(b, `,"details":`...)
	b = append(b, e.details...)
	return append(b, '}')
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
