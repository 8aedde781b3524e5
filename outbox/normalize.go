package outbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Limits of the event fields (contract §1) and the ones the contract leaves
// open, chosen so a single event stays small.
const (
	maxWorkspaceLen    = 64
	MaxActionLen       = 128 // action, in bytes (ASCII)
	MaxEmailLen        = 254 // actor.email, in characters
	MaxActorIDLen      = 128 // actor.id, in characters
	maxActorNameLen    = 256
	MaxSourceLen       = 32  // source, in bytes (ASCII)
	MaxResourceTypeLen = 128 // resource.type, in bytes (ASCII)
	maxIDKeys          = 64
	maxIDValueLen      = 256
	maxIDArrayLen      = 100
	maxUserAgent       = 512
	maxRequestID       = 128
	maxFutureSkew      = 5 * time.Minute
	DefaultRetention   = 365
)

// row is an event in its stored form, exactly the columns of audit_outbox.
// Its pointer fields (nil is NULL) point into a rowText.
type row struct {
	id              uuid.UUID
	workspaceID     string
	occurredAt      time.Time
	recordedAt      time.Time
	action          string
	actorType       string
	actorID         *string
	actorEmail      *string
	actorName       *string
	resourceType    *string
	resourceIDs     *string
	resourceIDsFlat string
	source          string
	ip              *netip.Addr
	userAgent       *string
	requestID       *string
	details         *string
}

// rowText holds the values a row's pointer fields point at, so the
// nullable columns of a row cost one allocation (normaliseAll: one for the
// whole batch) rather than one per non-null field.
type rowText struct {
	actorID, actorEmail, actorName string
	resourceType, resourceIDs      string
	userAgent, requestID, details  string
	ip                             netip.Addr
}

// scratch is working memory a normalising goroutine reuses from one event
// to the next: the resource ids being sorted, and the text derived from the
// event (stored resource ids, their flat form, details) before it becomes
// one string.
type scratch struct {
	ids []idEntry
	buf []byte
}

// scratchPool keeps scratch between calls, so single events (Record,
// Queue, Validate) and batches do not grow new buffers every time.
var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// maxScratchBuf bounds the buffer a pooled scratch keeps: details are
// canonicalised before their size is checked, and an oversized one must
// not stay pinned in the pool.
const maxScratchBuf = 64 << 10

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

// putScratch returns sc to the pool, without the last event's strings.
func putScratch(sc *scratch) {
	clear(sc.ids[:cap(sc.ids)])
	if cap(sc.buf) > maxScratchBuf {
		sc.buf = nil
	}
	scratchPool.Put(sc)
}

// recordTime is a recording time and the occurred_at window it accepts,
// computed once per batch rather than once per event.
type recordTime struct {
	now      time.Time // UTC, truncated to milliseconds
	latest   time.Time // now + maxFutureSkew
	earliest time.Time // now - the retention window
}

func (r *Recorder) recordTime(now time.Time) recordTime {
	now = now.UTC().Truncate(time.Millisecond)
	rt := recordTime{now: now, latest: now.Add(maxFutureSkew)}
	// In UTC a day is always 24 hours, so subtracting them gives AddDate's
	// instant without its calendar arithmetic, which showed in profiles of
	// Record; AddDate still takes windows a Duration cannot hold.
	if days := r.opts.RetentionDays; days <= maxDurationDays {
		rt.earliest = now.Add(-time.Duration(days) * 24 * time.Hour)
	} else {
		rt.earliest = now.AddDate(0, 0, -days)
	}
	return rt
}

// maxDurationDays is the most days a time.Duration holds.
const maxDurationDays = int(math.MaxInt64 / int64(24*time.Hour))

// normalise validates e (already merged with its context) and converts it to
// its stored form. now is the recording time.
func (r *Recorder) normalise(e Event, now time.Time) (row, error) {
	var out row
	sc := getScratch()
	err := r.normaliseTo(&out, new(rowText), sc, &e, r.recordTime(now))
	putScratch(sc)
	return out, err
}

// normaliseTo is normalise writing the row to out, the values of its
// pointer fields to t, with sc as working memory. Checks run in field
// order, so the first invalid field is the one reported.
func (r *Recorder) normaliseTo(out *row, t *rowText, sc *scratch, e *Event, rt recordTime) error {
	out.recordedAt = rt.now

	// id
	if e.ID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("generating event id: %w", err)
		}
		out.id = id
	} else {
		// Only the 36-character form; uuid.Parse also takes others.
		if len(e.ID) != 36 {
			return invalid("id", "must be a UUID in its 36-character form")
		}
		id, err := uuid.Parse(e.ID)
		if err != nil {
			return invalid("id", "must be a UUID in its 36-character form")
		}
		out.id = id
	}

	// workspace_id
	ws := strings.TrimSpace(e.WorkspaceID)
	if ws == "" {
		return invalid("workspace_id", "is required")
	}
	if !ValidWorkspaceID(ws) {
		return invalid("workspace_id", "must be 1-%d characters of A-Z a-z 0-9 . _ : -", maxWorkspaceLen)
	}
	out.workspaceID = ws

	// occurred_at
	if e.OccurredAt.IsZero() {
		out.occurredAt = rt.now
	} else {
		at := e.OccurredAt.UTC().Truncate(time.Millisecond)
		if at.After(rt.latest) {
			return invalid("occurred_at", "is more than 5 minutes in the future")
		}
		if at.Before(rt.earliest) {
			return invalid("occurred_at", "is older than the retention window of %d days", r.opts.RetentionDays)
		}
		out.occurredAt = at
	}

	// action
	if e.Action == "" {
		return invalid("action", "is required")
	}
	if !ValidAction(e.Action) {
		return invalid("action", "must be at most %d characters of lowercase dotted words of a-z 0-9 _ -, at least two (e.g. member.invite)", MaxActionLen)
	}
	out.action = e.Action

	// actor
	if err := normaliseActor(&e.Actor, out, t); err != nil {
		return err
	}

	// resource
	if e.Resource.Type != "" {
		if !ValidResourceType(e.Resource.Type) {
			return invalid("resource.type", "must be at most %d characters of a-z 0-9 _ -", MaxResourceTypeLen)
		}
		store(&out.resourceType, &t.resourceType, e.Resource.Type)
	}
	ids, err := normaliseIDs(sc.ids[:0], e.Resource.IDs)
	sc.ids = ids[:0]
	if err != nil {
		return err
	}
	// The derived text goes into sc.buf: stored ids, then their flat form,
	// then details; one string of it all is made at the end.
	buf := sc.buf[:0]
	if len(ids) > 0 {
		buf = appendCanonicalIDs(buf, ids)
	}
	idsEnd := len(buf)
	buf = appendFlatIDs(buf, ids)
	flatEnd := len(buf)
	sc.buf = buf

	// source
	src := strings.ToLower(strings.TrimSpace(e.Source))
	if src == "" {
		return invalid("source", "is required")
	}
	if !ValidSource(src) {
		return invalid("source", "must be 1-%d characters of a-z 0-9 _", MaxSourceLen)
	}
	out.source = src

	// ip: checked whatever the source (bad input is refused, not
	// dropped), then stored null for relayed sources.
	if ipText := strings.TrimSpace(e.IP); ipText != "" {
		addr, err := netip.ParseAddr(ipText)
		if err != nil || addr.Zone() != "" {
			return invalid("ip", "must be an IPv4 or IPv6 address without zone")
		}
		if !r.nullIP[src] {
			t.ip = addr.Unmap()
			out.ip = &t.ip
		}
	}

	// user_agent, request_id: truncated, not refused
	ua, err := optionalText("user_agent", e.UserAgent, maxUserAgent)
	if err != nil {
		return err
	}
	store(&out.userAgent, &t.userAgent, ua)
	rid, err := optionalText("request_id", e.RequestID, maxRequestID)
	if err != nil {
		return err
	}
	store(&out.requestID, &t.requestID, rid)

	// details
	hasDetails := false
	if e.Details != nil {
		buf, hasDetails, err = appendDetails(buf, e.Details)
		if err != nil {
			return invalid("details", "%v", err)
		}
		sc.buf = buf
		if n := len(buf) - flatEnd; hasDetails && n > r.opts.MaxDetailsBytes {
			return invalid("details", "is %d bytes once canonicalised, more than the limit of %d", n, r.opts.MaxDetailsBytes)
		}
	}

	if len(buf) > 0 {
		all := string(buf)
		if len(ids) > 0 {
			t.resourceIDs = all[:idsEnd]
			out.resourceIDs = &t.resourceIDs
		}
		out.resourceIDsFlat = all[idsEnd:flatEnd]
		if hasDetails {
			t.details = all[flatEnd:]
			out.details = &t.details
		}
	}
	return nil
}

func normaliseActor(a *Actor, out *row, t *rowText) error {
	if a.Type == "" {
		return invalid("actor.type", "is required")
	}
	switch a.Type {
	case ActorUser, ActorAPIKey, ActorService, ActorSystem:
	default:
		return invalid("actor.type", "must be one of user, api_key, service, system")
	}
	out.actorType = a.Type
	if err := checkText("actor.id", a.ID); err != nil {
		return err
	}
	if id := strings.TrimSpace(a.ID); id != "" {
		if !ValidActorID(id) {
			return invalid("actor.id", "must be at most %d characters", MaxActorIDLen)
		}
		store(&out.actorID, &t.actorID, id)
	}
	if err := checkText("actor.email", a.Email); err != nil {
		return err
	}
	// strings.ToLower returns its argument, unallocated, when there is
	// nothing to lower.
	if email := strings.ToLower(strings.TrimSpace(a.Email)); email != "" {
		if tooLong(email, MaxEmailLen) {
			return invalid("actor.email", "must be at most %d characters", MaxEmailLen)
		}
		if !oneAt(email) { // ValidEmail's other half: the length is checked above
			return invalid("actor.email", "must be an address with one @")
		}
		store(&out.actorEmail, &t.actorEmail, email)
	}
	if err := checkText("actor.name", a.Name); err != nil {
		return err
	}
	if name := strings.TrimSpace(a.Name); name != "" {
		if tooLong(name, maxActorNameLen) {
			return invalid("actor.name", "must be at most %d characters", maxActorNameLen)
		}
		store(&out.actorName, &t.actorName, name)
	}
	if a.Type == ActorUser && out.actorID == nil && out.actorEmail == nil {
		return invalid("actor", "a user actor needs an id or an email")
	}
	return nil
}

// store sets a nullable column: s goes into slot, which *col then points
// at; "" leaves *col nil (NULL).
func store(col **string, slot *string, s string) {
	if s != "" {
		*slot = s
		*col = slot
	}
}

// tooLong reports whether s has more than max characters. A string has at
// most as many characters as bytes, so only a long one needs counting.
func tooLong(s string, max int) bool {
	return len(s) > max && utf8.RuneCountInString(s) > max
}

// oneAt reports whether email has exactly one '@', neither first nor
// last, and no space, tab, CR or LF: one pass over it.
func oneAt(email string) bool {
	at := -1
	for i := 0; i < len(email); i++ {
		switch email[i] {
		case '@':
			if at >= 0 {
				return false
			}
			at = i
		case ' ', '\t', '\r', '\n':
			return false
		}
	}
	return at > 0 && at < len(email)-1
}

// textProblem says why PostgreSQL text cannot hold s, or "" when it can.
// Callers build the field name of their error only when there is one.
func textProblem(s string) string {
	if !utf8.ValidString(s) {
		return "is not valid UTF-8"
	}
	if strings.IndexByte(s, 0) >= 0 {
		return "contains a NUL character"
	}
	return ""
}

// checkText refuses strings PostgreSQL text cannot hold or that are not text.
func checkText(field, s string) error {
	if p := textProblem(s); p != "" {
		return invalid(field, "%s", p)
	}
	return nil
}

// optionalText validates s and truncates it at a UTF-8 boundary to max
// bytes; "" is none (a non-empty s never truncates to "").
func optionalText(field, s string, max int) (string, error) {
	if err := checkText(field, s); err != nil {
		return "", err
	}
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s, nil
}

// idEntry is one resource id key, normalised: a lone string or number
// (single, in one) keeps that shape in the stored JSON; an array's values are
// strings, sorted and de-duplicated (vals).
type idEntry struct {
	key    string
	single bool
	one    string
	vals   []string
}

// normaliseIDs checks resource ids, converts every value to strings and
// appends them to out, sorted by key.
func normaliseIDs(out []idEntry, ids map[string]any) ([]idEntry, error) {
	if len(ids) == 0 {
		return out, nil
	}
	if len(ids) > maxIDKeys {
		return out, invalid("resource.ids", "has more than %d keys", maxIDKeys)
	}
	for k, v := range ids {
		if !validResourceKey(k) {
			return out, invalid("resource.ids", "key %q must be 1-64 characters of a-z 0-9 _", k)
		}
		if s, ok, err := idScalar(k, v); err != nil {
			return out, err
		} else if ok {
			out = append(out, idEntry{key: k, single: true, one: s})
			continue
		}
		var list []string
		var err error
		switch arr := v.(type) {
		case []any:
			list, err = idList(k, arr)
		case []string:
			list, err = idList(k, arr)
		case []int:
			list, err = idList(k, arr)
		case []int64:
			list, err = idList(k, arr)
		default:
			err = invalid("resource.ids."+k, "must be a string, a number or an array of those")
		}
		if err != nil {
			return out, err
		}
		out = append(out, idEntry{key: k, vals: list})
	}
	// Insertion sort: a few keys, all distinct, compared directly.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].key < out[j-1].key; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, nil
}

// idList converts the values of one resource id array to sorted,
// de-duplicated strings.
func idList[T any](key string, items []T) ([]string, error) {
	if len(items) > maxIDArrayLen {
		return nil, invalid("resource.ids."+key, "has more than %d values", maxIDArrayLen)
	}
	list := make([]string, 0, len(items))
	for _, it := range items {
		s, ok, err := idScalar(key, it)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, invalid("resource.ids."+key, "must be a string, a number or an array of those")
		}
		list = append(list, s)
	}
	slices.Sort(list)
	return slices.Compact(list), nil
}

// idScalar converts one resource id value to its string form. ok is false
// when v is not a scalar of an accepted type.
func idScalar(key string, v any) (s string, ok bool, err error) {
	switch x := v.(type) {
	case string:
		if p := textProblem(x); p != "" {
			return "", false, invalid("resource.ids."+key, "%s", p)
		}
		s = x
	case json.Number:
		s, err = decimalString(x.String())
		if err != nil {
			return "", false, invalid("resource.ids."+key, "%v", err)
		}
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return "", false, invalid("resource.ids."+key, "is not a finite number")
		}
		s = strconv.FormatFloat(x, 'f', -1, 64)
	case float32:
		s = strconv.FormatFloat(float64(x), 'f', -1, 32)
	case int:
		s = strconv.FormatInt(int64(x), 10)
	case int32:
		s = strconv.FormatInt(int64(x), 10)
	case int64:
		s = strconv.FormatInt(x, 10)
	case uint:
		s = strconv.FormatUint(uint64(x), 10)
	case uint32:
		s = strconv.FormatUint(uint64(x), 10)
	case uint64:
		s = strconv.FormatUint(x, 10)
	default:
		return "", false, nil
	}
	if len(s) > maxIDValueLen {
		return "", false, invalid("resource.ids."+key, "value is longer than %d bytes", maxIDValueLen)
	}
	return s, true, nil
}

// decimalString renders a JSON number literal as a plain decimal string:
// integers keep every digit, others go through float64 without exponent.
func decimalString(lit string) (string, error) {
	if isIntegerLiteral(lit) {
		if lit == "-0" {
			return "0", nil
		}
		return lit, nil
	}
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil || math.IsInf(f, 0) {
		return "", fmt.Errorf("number %s is out of range", lit)
	}
	return strconv.FormatFloat(f, 'f', -1, 64), nil
}

// isIntegerLiteral reports whether lit is -?(0|[1-9][0-9]*).
func isIntegerLiteral(lit string) bool {
	digits := strings.TrimPrefix(lit, "-")
	if digits == "" || (digits[0] == '0' && len(digits) > 1) {
		return false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return false
		}
	}
	return true
}

// appendDetails appends a caller's details value in RFC 8785 form to dst;
// ok is false when there are none (nil, or a JSON null).
func appendDetails(dst []byte, d any) (out []byte, ok bool, err error) {
	var raw []byte
	switch v := d.(type) {
	case json.RawMessage:
		raw = v
	case []byte:
		raw = v
	case string:
		return dst, false, errors.New("must be a JSON object, not a string")
	case map[string]any:
		if v == nil {
			return dst, false, nil
		}
		canon, err := canonicalFromGo(v)
		if err != nil || canon == nil {
			return dst, false, err
		}
		return append(dst, canon...), true, nil
	default:
		canon, err := canonicalFromGo(v)
		if err != nil {
			return dst, false, err
		}
		if string(canon) == "null" {
			return dst, false, nil
		}
		if len(canon) == 0 || canon[0] != '{' {
			return dst, false, errors.New("must be a JSON object")
		}
		return append(dst, canon...), true, nil
	}
	// An object starts with '{' at once, as it almost always does, or
	// after spaces; anything else may be empty or null.
	if len(raw) == 0 || raw[0] != '{' {
		if t := bytes.TrimSpace(raw); len(t) == 0 || string(t) == "null" {
			return dst, false, nil
		}
	}
	if isCanonicalObject(raw) {
		return append(dst, raw...), true, nil
	}
	if out, err = appendCanonicalJSON(dst, raw); err != nil {
		return dst, false, err
	}
	return out, true, nil
}
