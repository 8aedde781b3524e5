package events

import (
	"encoding/base64"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

var testCursorKey = []byte("0123456789abcdef0123456789abcdef")

func TestCursorRoundTripAndBinding(t *testing.T) {
	t.Parallel()
	p := position{OccurredAt: time.Date(2026, 11, 25, 20, 30, 25, 123_000_000, time.UTC), ID: uuid.MustParse("01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77")}
	f := Filters{Actions: []string{"ticket.*"}, From: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	c := encodeCursor(testCursorKey, p, "ws_a", f)
	got, err := decodeCursor(testCursorKey, c, "ws_a", f)
	require.NoError(t, err)
	require.Equal(t, p, got)

	for name, tc := range map[string]struct {
		key []byte
		ws  string
		f   Filters
	}{
		"other workspace": {testCursorKey, "ws_b", f},
		"other filters":   {testCursorKey, "ws_a", Filters{Actions: []string{"ticket.*"}}},
		"other key":       {[]byte("fedcba9876543210fedcba9876543210"), "ws_a", f},
		"workspace shift": {testCursorKey, "ws_", f}, // length prefix: no re-splitting
	} {
		_, err := decodeCursor(tc.key, c, tc.ws, tc.f)
		require.ErrorIs(t, err, errBadCursor, name)
	}
}

// FuzzDecodeCursor: decoding never panics, and whatever decodes re-encodes
// to the same cursor (only genuine cursors are accepted).
func FuzzDecodeCursor(f *testing.F) {
	p := position{OccurredAt: time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC), ID: uuid.MustParse("01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77")}
	good := encodeCursor(testCursorKey, p, "ws_a", Filters{})
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add("")
	f.Add("AQ")
	f.Add(base64.RawURLEncoding.EncodeToString(make([]byte, cursorLen)))
	f.Fuzz(func(t *testing.T, s string) {
		got, err := decodeCursor(testCursorKey, s, "ws_a", Filters{})
		if err != nil {
			return
		}
		if again := encodeCursor(testCursorKey, got, "ws_a", Filters{}); again != s {
			t.Fatalf("accepted %q, which re-encodes as %q", s, again)
		}
	})
}
