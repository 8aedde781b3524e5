package outbox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Limits of the event fields (contract §1) and the ones the contract leaves
// open, chosen so a single event stays small.
const (
	maxWorkspaceLen  = 64
	maxActionLen     = 128
	maxEmailLen      = 254
	maxActorIDLen    = 128
	maxActorNameLen  = 256
	maxSourceLen     = 32
	maxResourceType  = 128
	maxIDKeys        = 64
	maxIDValueLen    = 256
	maxIDArrayLen    = 100
	maxUserAgent     = 512
	maxRequestID     = 128
	maxFutureSkew    = 5 * time.Minute
	DefaultRetention = 365
)

// row is an event in its stored form, exactly the columns of audit_outbox.
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

// normalise validates e (already merged with its context) and converts it to
// its stored form. now is the recording time.
func (r *Recorder) normalise(e Event, now time.Time) (row, error) {
	var out row
	now = now.UTC().Truncate(time.Millisecond)
	out.recordedAt = now

	// id
	if e.ID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return out, fmt.Errorf("generating event id: %w", err)
		}
		out.id = id
	} else {
		id, err := uuid.Parse(e.ID)
		if err != nil || len(e.ID) != 36 {
			return out, invalid("id", "must be a UUID in its 36-character form")
		}
		out.id = id
	}

	// workspace_id
	ws := strings.TrimSpace(e.WorkspaceID)
	if ws == "" {
		return out, invalid("workspace_id", "is required")
	}
	if !ValidWorkspaceID(ws) {
		return out, invalid("workspace_id", "must be 1-%d characters of A-Z a-z 0-9 . _ : -", maxWorkspaceLen)
	}
	out.workspaceID = ws

	// occurred_at
	if e.OccurredAt.IsZero() {
		out.occurredAt = now
	} else {
		t := e.OccurredAt.UTC().Truncate(time.Millisecond)
		if t.After(now.Add(maxFutureSkew)) {
			return out, invalid("occurred_at", "is more than 5 minutes in the future")
		}
		if t.Before(now.AddDate(0, 0, -r.opts.RetentionDays)) {
			return out, invalid("occurred_at", "is older than the retention window of %d days", r.opts.RetentionDays)
		}
		out.occurredAt = t
	}

	// action
	if e.Action == "" {
		return out, invalid("action", "is required")
	}
	if !ValidAction(e.Action) {
		return out, invalid("action", "must be at most %d characters of lowercase dotted words of a-z 0-9 _ -, at least two (e.g. member.invite)", maxActionLen)
	}
	out.action = e.Action

	// actor
	if err := normaliseActor(e.Actor, &out); err != nil {
		return out, err
	}

	// resource
	if e.Resource.Type != "" {
		if !ValidResourceType(e.Resource.Type) {
			return out, invalid("resource.type", "must be at most %d characters of a-z 0-9 _ -", maxResourceType)
		}
		rt := e.Resource.Type // a copy: &e.Resource.Type would move all of e to the heap
		out.resourceType = &rt
	}
	ids, err := normaliseIDs(e.Resource.IDs)
	if err != nil {
		return out, err
	}
	if len(ids) > 0 {
		// Both forms in one allocation.
		buf := appendCanonicalIDs(make([]byte, 0, 256), ids)
		n := len(buf)
		all := string(appendFlatIDs(buf, ids))
		s := all[:n]
		out.resourceIDs = &s
		out.resourceIDsFlat = all[n:]
	}

	// source
	src := strings.ToLower(strings.TrimSpace(e.Source))
	if src == "" {
		return out, invalid("source", "is required")
	}
	if !ValidSource(src) {
		return out, invalid("source", "must be 1-%d characters of a-z 0-9 _", maxSourceLen)
	}
	out.source = src

	// ip: null for relayed sources whatever was supplied
	if ipText := strings.TrimSpace(e.IP); ipText != "" && !r.nullIP[src] {
		addr, err := netip.ParseAddr(ipText)
		if err != nil || addr.Zone() != "" {
			return out, invalid("ip", "must be an IPv4 or IPv6 address without zone")
		}
		addr = addr.Unmap()
		out.ip = &addr
	}

	// user_agent, request_id: truncated, not refused
	if s, err := optionalText("user_agent", e.UserAgent, maxUserAgent); err != nil {
		return out, err
	} else {
		out.userAgent = s
	}
	if s, err := optionalText("request_id", e.RequestID, maxRequestID); err != nil {
		return out, err
	} else {
		out.requestID = s
	}

	// details
	if e.Details != nil {
		canon, err := canonicalDetails(e.Details)
		if err != nil {
			return out, invalid("details", "%v", err)
		}
		if canon != nil {
			if len(canon) > r.opts.MaxDetailsBytes {
				return out, invalid("details", "is %d bytes once canonicalised, more than the limit of %d", len(canon), r.opts.MaxDetailsBytes)
			}
			s := string(canon)
			out.details = &s
		}
	}
	return out, nil
}

func normaliseActor(a Actor, out *row) error {
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
		if utf8.RuneCountInString(id) > maxActorIDLen {
			return invalid("actor.id", "must be at most %d characters", maxActorIDLen)
		}
		out.actorID = &id
	}
	if err := checkText("actor.email", a.Email); err != nil {
		return err
	}
	if email := strings.ToLower(strings.TrimSpace(a.Email)); email != "" {
		if len(email) > maxEmailLen {
			return invalid("actor.email", "must be at most %d characters", maxEmailLen)
		}
		at := strings.IndexByte(email, '@')
		if strings.Count(email, "@") != 1 || at == 0 || at == len(email)-1 || strings.ContainsAny(email, " \t\r\n") {
			return invalid("actor.email", "must be an address with one @")
		}
		out.actorEmail = &email
	}
	if err := checkText("actor.name", a.Name); err != nil {
		return err
	}
	if name := strings.TrimSpace(a.Name); name != "" {
		if utf8.RuneCountInString(name) > maxActorNameLen {
			return invalid("actor.name", "must be at most %d characters", maxActorNameLen)
		}
		out.actorName = &name
	}
	if a.Type == ActorUser && out.actorID == nil && out.actorEmail == nil {
		return invalid("actor", "a user actor needs an id or an email")
	}
	return nil
}

// checkText refuses strings PostgreSQL text cannot hold or that are not text.
func checkText(field, s string) error {
	if !utf8.ValidString(s) {
		return invalid(field, "is not valid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return invalid(field, "contains a NUL character")
	}
	return nil
}

// optionalText validates s and truncates it at a UTF-8 boundary to max bytes.
func optionalText(field, s string, max int) (*string, error) {
	if err := checkText(field, s); err != nil {
		return nil, err
	}
	if s == "" {
		return nil, nil
	}
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return &s, nil
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

// values returns the entry's values as a list.
func (e *idEntry) values() []string {
	if e.single {
		return []string{e.one}
	}
	return e.vals
}

// normaliseIDs checks resource ids and converts every value to strings,
// sorted by key.
func normaliseIDs(ids map[string]any) ([]idEntry, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if len(ids) > maxIDKeys {
		return nil, invalid("resource.ids", "has more than %d keys", maxIDKeys)
	}
	out := make([]idEntry, 0, len(ids))
	for k, v := range ids {
		if !validResourceKey(k) {
			return nil, invalid("resource.ids", "key %q must be 1-64 characters of a-z 0-9 _", k)
		}
		if s, ok, err := idScalar(k, v); err != nil {
			return nil, err
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
			return nil, err
		}
		out = append(out, idEntry{key: k, vals: list})
	}
	slices.SortFunc(out, func(a, b idEntry) int { return strings.Compare(a.key, b.key) })
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
		if err := checkText("resource.ids."+key, x); err != nil {
			return "", false, err
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

// canonicalDetails returns a caller's details value in RFC 8785 form; nil
// means no details (a JSON null counts as none too).
func canonicalDetails(d any) ([]byte, error) {
	var raw []byte
	switch v := d.(type) {
	case json.RawMessage:
		raw = v
	case []byte:
		raw = v
	case string:
		return nil, fmt.Errorf("must be a JSON object, not a string")
	case map[string]any:
		if v == nil {
			return nil, nil
		}
		return canonicalFromGo(v)
	default:
		canon, err := canonicalFromGo(v)
		if err != nil {
			return nil, err
		}
		if string(canon) == "null" {
			return nil, nil
		}
		if len(canon) == 0 || canon[0] != '{' {
			return nil, fmt.Errorf("must be a JSON object")
		}
		return canon, nil
	}
	if t := bytes.TrimSpace(raw); len(t) == 0 || string(t) == "null" {
		return nil, nil
	}
	if isCanonicalObject(raw) {
		return raw, nil
	}
	return canonicalJSON(raw)
}
