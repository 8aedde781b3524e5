package events

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/auditlog/auditlog/outbox"
)

// Query parameter names of the filters, shared by GET /v1/events, GET
// /v1/events/export and the export command's flags.
const (
	ParamActorEmail   = "actor_email"
	ParamActorID      = "actor_id"
	ParamAction       = "action"
	ParamResourceType = "resource_type"
	ParamSource       = "source"
	ParamFrom         = "from"
	ParamTo           = "to"
)

// MaxFilterValues bounds how many values one filter may be given, so a
// request cannot grow the statement without limit.
const MaxFilterValues = 100

// actionPrefixRe is what may stand before the * of an action prefix.
var actionPrefixRe = regexp.MustCompile(`^[a-z0-9_.-]+$`)

// Filters selects events of one workspace. Within a field the values are
// alternatives (any may match); different fields must all match. Empty
// fields and zero times do not filter. ParseFilters returns them
// normalised: values trimmed/lower-cased like ingest, de-duplicated and
// sorted, times in UTC truncated to microseconds (PostgreSQL's precision).
type Filters struct {
	// ActorEmails matches actor_email exactly (stored lower-cased).
	ActorEmails []string
	// ActorIDs matches actor_id exactly.
	ActorIDs []string
	// Actions are exact actions ("ticket.update") or prefixes ending in
	// '*' ("ticket.*" matches every action starting with "ticket.").
	Actions []string
	// ResourceTypes matches resource_type exactly.
	ResourceTypes []string
	// Sources matches source exactly.
	Sources []string
	// From is the inclusive lower bound of occurred_at; zero for none.
	From time.Time
	// To is the exclusive upper bound of occurred_at; zero for none.
	To time.Time
}

// ParamError is a bad query parameter (or flag); Param names it and is
// reported as the error's field.
type ParamError struct {
	Param   string
	Message string
}

func (e *ParamError) Error() string { return e.Param + ": " + e.Message }

func paramErr(param, format string, args ...any) *ParamError {
	return &ParamError{Param: param, Message: fmt.Sprintf(format, args...)}
}

// ParseFilters validates and normalises the filter parameters in v. Every
// key of v must be a filter parameter: anything else is refused by name, so
// a misspelt filter never silently widens a query.
func ParseFilters(v url.Values) (Filters, error) {
	var f Filters
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	slices.Sort(keys) // report the same unknown parameter every time
	for _, k := range keys {
		vals := v[k]
		var err error
		switch k {
		case ParamActorEmail:
			f.ActorEmails, err = parseList(k, vals, normaliseEmail)
		case ParamActorID:
			f.ActorIDs, err = parseList(k, vals, normaliseActorID)
		case ParamAction:
			f.Actions, err = parseList(k, vals, normaliseAction)
		case ParamResourceType:
			f.ResourceTypes, err = parseList(k, vals, normaliseResourceType)
		case ParamSource:
			f.Sources, err = parseList(k, vals, normaliseSource)
		case ParamFrom:
			f.From, err = parseTime(k, vals)
		case ParamTo:
			f.To, err = parseTime(k, vals)
		default:
			return Filters{}, paramErr(k, "unknown query parameter %q", k)
		}
		if err != nil {
			return Filters{}, err
		}
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		return Filters{}, paramErr(ParamTo, "must be later than from")
	}
	return f, nil
}

// parseList normalises each value with norm and returns them de-duplicated
// and sorted.
func parseList(param string, vals []string, norm func(string) (string, error)) ([]string, error) {
	if len(vals) > MaxFilterValues {
		return nil, paramErr(param, "given %d times, more than the limit of %d", len(vals), MaxFilterValues)
	}
	out := make([]string, 0, len(vals))
	for _, raw := range vals {
		if !utf8.ValidString(raw) || strings.IndexByte(raw, 0) >= 0 {
			return nil, paramErr(param, "must be valid UTF-8 text without NUL characters")
		}
		s, err := norm(raw)
		if err != nil {
			return nil, paramErr(param, "%v", err)
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func normaliseEmail(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return "", fmt.Errorf("must not be empty")
	}
	if !outbox.ValidEmail(s) {
		return "", fmt.Errorf("must be an email address with one @, at most %d characters", outbox.MaxEmailLen)
	}
	return s, nil
}

func normaliseActorID(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", fmt.Errorf("must not be empty")
	}
	if !outbox.ValidActorID(s) {
		return "", fmt.Errorf("must be at most %d characters", outbox.MaxActorIDLen)
	}
	return s, nil
}

func normaliseAction(s string) (string, error) {
	if prefix, ok := strings.CutSuffix(s, "*"); ok {
		if len(prefix) == 0 || len(prefix) >= outbox.MaxActionLen || !actionPrefixRe.MatchString(prefix) {
			return "", fmt.Errorf("a prefix must be 1-%d characters of a-z 0-9 _ - . followed by one *, e.g. ticket.*", outbox.MaxActionLen-1)
		}
		return s, nil
	}
	if !outbox.ValidAction(s) {
		return "", fmt.Errorf("must be an action (lowercase dotted words of a-z 0-9 _ -, e.g. ticket.update) or a prefix ending in * (e.g. ticket.*)")
	}
	return s, nil
}

func normaliseResourceType(s string) (string, error) {
	if !outbox.ValidResourceType(s) {
		return "", fmt.Errorf("must be 1-%d characters of a-z 0-9 _ -", outbox.MaxResourceTypeLen)
	}
	return s, nil
}

func normaliseSource(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if !outbox.ValidSource(s) {
		return "", fmt.Errorf("must be 1-%d characters of a-z 0-9 _", outbox.MaxSourceLen)
	}
	return s, nil
}

func parseTime(param string, vals []string) (time.Time, error) {
	if len(vals) != 1 {
		return time.Time{}, paramErr(param, "must be given once")
	}
	t, err := outbox.ParseTimestamp(vals[0])
	if err != nil {
		return time.Time{}, paramErr(param, "must be an RFC 3339 timestamp with an offset, e.g. 2026-11-01T00:00:00Z")
	}
	// PostgreSQL keeps microseconds; truncating here makes the cursor's
	// filter hash and the bound the database compares with the same value.
	return t.UTC().Truncate(time.Microsecond), nil
}

// Values renders f back as query parameters, the inverse of ParseFilters.
func (f Filters) Values() url.Values {
	v := url.Values{}
	add := func(k string, vals []string) {
		if len(vals) > 0 {
			v[k] = slices.Clone(vals)
		}
	}
	add(ParamActorEmail, f.ActorEmails)
	add(ParamActorID, f.ActorIDs)
	add(ParamAction, f.Actions)
	add(ParamResourceType, f.ResourceTypes)
	add(ParamSource, f.Sources)
	if !f.From.IsZero() {
		v.Set(ParamFrom, f.From.UTC().Format(time.RFC3339Nano))
	}
	if !f.To.IsZero() {
		v.Set(ParamTo, f.To.UTC().Format(time.RFC3339Nano))
	}
	return v
}

// canonical is an unambiguous encoding of the normalised filter set, the
// input of the cursor's binding to its query.
func (f Filters) canonical() []byte {
	var b []byte
	list := func(name string, vals []string) {
		b = append(b, name...)
		b = append(b, '=')
		for _, s := range vals {
			// Length-prefixed, so no value can forge a separator.
			b = fmt.Appendf(b, "%d:%s", len(s), s)
		}
		b = append(b, ';')
	}
	list(ParamActorEmail, f.ActorEmails)
	list(ParamActorID, f.ActorIDs)
	list(ParamAction, f.Actions)
	list(ParamResourceType, f.ResourceTypes)
	list(ParamSource, f.Sources)
	tm := func(name string, t time.Time) {
		b = append(b, name...)
		if !t.IsZero() {
			b = fmt.Appendf(b, "=%d", t.UnixMicro())
		}
		b = append(b, ';')
	}
	tm(ParamFrom, f.From)
	tm(ParamTo, f.To)
	return b
}

// splitActions separates exact actions from prefixes; prefixes come back
// without their '*'.
func splitActions(actions []string) (exact, prefixes []string) {
	for _, a := range actions {
		if p, ok := strings.CutSuffix(a, "*"); ok {
			prefixes = append(prefixes, p)
		} else {
			exact = append(exact, a)
		}
	}
	return exact, prefixes
}

// prefixUpperBound is the smallest string greater than every string that
// starts with p in byte order (the action column's "C" collation). p is
// ASCII from the action alphabet, so incrementing its last byte never
// overflows.
func prefixUpperBound(p string) string {
	b := []byte(p)
	b[len(b)-1]++
	return string(b)
}
