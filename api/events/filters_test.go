package events

import (
	"bytes"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseFiltersNormalises(t *testing.T) {
	t.Parallel()
	f, err := ParseFilters(url.Values{
		"actor_email":   {" Alice@Acme.IO ", "alice@acme.io", "bob@acme.io"},
		"actor_id":      {" u_1 ", "u_1"},
		"action":        {"ticket.*", "member.invite", "ticket.*"},
		"resource_type": {"ticket"},
		"source":        {"WEB", "api"},
		"from":          {"2026-11-01T01:00:00.123456789+01:00"},
		"to":            {"2026-12-01T00:00:00Z"},
	})
	require.NoError(t, err)
	require.Equal(t, Filters{
		ActorEmails:   []string{"alice@acme.io", "bob@acme.io"},
		ActorIDs:      []string{"u_1"},
		Actions:       []string{"member.invite", "ticket.*"},
		ResourceTypes: []string{"ticket"},
		Sources:       []string{"api", "web"},
		From:          time.Date(2026, 11, 1, 0, 0, 0, 123456000, time.UTC),
		To:            time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
	}, f)
	// Values round-trips.
	g, err := ParseFilters(f.Values())
	require.NoError(t, err)
	require.Equal(t, f, g)

	// RFC 3339 §5.6: a lower-case t and z are accepted.
	f, err = ParseFilters(url.Values{"from": {"2026-11-01t00:00:00z"}})
	require.NoError(t, err)
	require.Equal(t, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), f.From)

	// At most 254 characters, not bytes.
	long := strings.Repeat("é", 249) + "@b.io"
	f, err = ParseFilters(url.Values{"actor_email": {long}})
	require.NoError(t, err)
	require.Equal(t, []string{long}, f.ActorEmails)
	_, err = ParseFilters(url.Values{"actor_email": {"é" + long}})
	require.Error(t, err)

	empty, err := ParseFilters(nil)
	require.NoError(t, err)
	require.Equal(t, Filters{}, empty)
}

func TestParseFiltersRefuses(t *testing.T) {
	t.Parallel()
	for q, param := range map[string]string{
		"actor_email=x": "actor_email",
		"actor_id=%20":  "actor_id",
		"action=a":      "action",
		"action=a.b*c":  "action",
		"action=*":      "action",
		"action=" + strings.Repeat("a", 128) + "*": "action",
		"action=" + strings.Repeat("a.", 64) + "a": "action",
		"resource_type=":  "resource_type",
		"source=a-b":      "source",
		"from=now":        "from",
		"to=":             "to",
		"limit=5":         "limit",
		"workspace_id=ws": "workspace_id",
	} {
		v, err := url.ParseQuery(q)
		require.NoError(t, err)
		_, err = ParseFilters(v)
		pe, ok := err.(*ParamError)
		require.True(t, ok, "%s: %v", q, err)
		require.Equal(t, param, pe.Param, q)
	}
}

func TestPrefixUpperBound(t *testing.T) {
	t.Parallel()
	require.Equal(t, "ticket/", prefixUpperBound("ticket."))
	require.Equal(t, "a.", prefixUpperBound("a-"))
	require.Equal(t, "tz", prefixUpperBound("ty"))
	exact, prefixes := splitActions([]string{"a.b", "c.*", "d*"})
	require.Equal(t, []string{"a.b"}, exact)
	require.Equal(t, []string{"c.", "d"}, prefixes)
}

// TestCanonicalUnambiguous: differently split values never encode alike.
func TestCanonicalUnambiguous(t *testing.T) {
	t.Parallel()
	a := Filters{ActorIDs: []string{"a;actor_id=b"}}.canonical()
	b := Filters{ActorIDs: []string{"a", "b"}}.canonical()
	c := Filters{ActorIDs: []string{"a"}, ActorEmails: []string{"b@c"}}.canonical()
	require.False(t, bytes.Equal(a, b))
	require.False(t, bytes.Equal(b, c))
}

// FuzzParseFilters: any query string either parses into normalised filters
// that survive a round trip through Values, or fails with a ParamError.
func FuzzParseFilters(f *testing.F) {
	for _, s := range []string{
		"actor_email=A@b.c&source=WEB&action=ticket.*",
		"action=ticket.update&action=member.*&from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00%2B01:00",
		"actor_id=%27);DROP%20TABLE%20x;--",
		"actor_id=%ff%fe",
		"from=2026-11-01T00:00:00.999999999Z",
		"action=-.-*",
		"bogus=1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		v, err := url.ParseQuery(q)
		if err != nil {
			return
		}
		got, err := ParseFilters(v)
		if err != nil {
			if _, ok := err.(*ParamError); !ok {
				t.Fatalf("error %v is not a *ParamError", err)
			}
			return
		}
		again, err := ParseFilters(got.Values())
		if err != nil {
			t.Fatalf("normalised filters %v do not parse: %v", got.Values(), err)
		}
		if !bytes.Equal(got.canonical(), again.canonical()) {
			t.Fatalf("round trip changed the filters: %v vs %v", got, again)
		}
		// The SQL text depends only on the filters' shape, never on a value:
		// the same shape with placeholder values gives the same statement.
		shape := Filters{From: got.From, To: got.To}
		dummy := func(vals []string, keepStar bool) []string {
			out := make([]string, len(vals))
			for i, s := range vals {
				out[i] = "dummy.v" + strings.Repeat("x", i)
				if keepStar && strings.HasSuffix(s, "*") {
					out[i] += "*"
				}
			}
			return out
		}
		shape.ActorEmails = dummy(got.ActorEmails, false)
		shape.ActorIDs = dummy(got.ActorIDs, false)
		shape.Actions = dummy(got.Actions, true)
		shape.ResourceTypes = dummy(got.ResourceTypes, false)
		shape.Sources = dummy(got.Sources, false)
		sql, _ := querySQL("ws", got, nil, 10)
		want, _ := querySQL("other", shape, nil, 10)
		if sql != want {
			t.Fatalf("SQL depends on values:\n%s\nvs\n%s", sql, want)
		}
		_, _, copySQL := exportSQL("ws", got, true)
		_, _, wantCopy := exportSQL("other", shape, true)
		if copySQL != wantCopy {
			t.Fatalf("COPY SQL depends on values:\n%s\nvs\n%s", copySQL, wantCopy)
		}
	})
}
