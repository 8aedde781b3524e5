package slack

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var secret = []byte("8f742231b10e8888abcd99yyyzzz85a5")

func headers(sig, ts string) http.Header {
	h := http.Header{}
	if sig != "" {
		h.Set(HeaderSignature, sig)
	}
	if ts != "" {
		h.Set(HeaderTimestamp, ts)
	}
	return h
}

// TestSignMatchesSlackExample checks Sign against the worked example of
// Slack's "Verifying requests from Slack" guide.
func TestSignMatchesSlackExample(t *testing.T) {
	t.Parallel()
	body := []byte("token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
	require.Equal(t, "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
		Sign(secret, "1531420618", body))
}

func TestVerify(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	body := []byte("payload=%7B%7D")
	ts := strconv.FormatInt(now.Unix(), 10)
	good := Sign(secret, ts, body)

	require.NoError(t, Verify(secret, headers(good, ts), body, now))
	require.NoError(t, Verify(secret, headers(good, ts), body, now.Add(MaxSkew)), "exactly 5 minutes is still fresh")

	cases := []struct {
		name string
		h    http.Header
		body []byte
		now  time.Time
		want error
	}{
		{"no signature", headers("", ts), body, now, ErrMissingSignature},
		{"no timestamp", headers(good, ""), body, now, ErrMissingSignature},
		{"stale", headers(good, ts), body, now.Add(MaxSkew + time.Second), ErrStale},
		{"future", headers(good, ts), body, now.Add(-MaxSkew - time.Second), ErrStale},
		{"signed stale replay", headers(Sign(secret, "1799999000", body), "1799999000"), body, now, ErrStale},
		{"bad timestamp", headers(good, "17e8"), body, now, ErrBadTimestamp},
		{"negative timestamp", headers(good, "-1"), body, now, ErrBadTimestamp},
		{"huge timestamp", headers(good, "99999999999999999999"), body, now, ErrBadTimestamp},
		{"tampered body", headers(good, ts), []byte("payload=%7B%7D%20"), now, ErrBadSignature},
		{"other secret", headers(Sign([]byte("other"), ts, body), ts), body, now, ErrBadSignature},
		{"timestamp not signed", headers(good, strconv.FormatInt(now.Unix()+1, 10)), body, now, ErrBadSignature},
		{"upper-case hex", headers("v0="+string(toUpper(good[3:])), ts), body, now, ErrBadSignature},
		{"other version", headers("v1="+good[3:], ts), body, now, ErrBadSignature},
		{"truncated", headers(good[:20], ts), body, now, ErrBadSignature},
	}
	for _, tc := range cases {
		require.ErrorIs(t, Verify(secret, tc.h, tc.body, tc.now), tc.want, tc.name)
	}
}

func toUpper(s string) []byte {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'f' {
			b[i] = c - 32
		}
	}
	return b
}

// FuzzVerify: Verify never panics, accepts only what Sign produced for the
// same body and timestamp, and always accepts that.
func FuzzVerify(f *testing.F) {
	f.Add("1800000000", "v0=00", []byte("payload=%7B%7D"))
	f.Add("", "", []byte{})
	f.Add("0001800000000", "v0=", []byte("a"))
	f.Add("1800000000", "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503", []byte("x"))
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, ts, sig string, body []byte) {
		err := Verify(secret, headers(sig, ts), body, now)
		if err == nil && sig != Sign(secret, ts, body) {
			t.Fatalf("accepted a signature Sign did not make: ts=%q sig=%q", ts, sig)
		}
		if sec, perr := strconv.ParseInt(ts, 10, 64); perr == nil && sec == now.Unix() && len(ts) <= 12 && ts[0] != '+' && ts[0] != '-' {
			require.NoError(t, Verify(secret, headers(Sign(secret, ts, body), ts), body, now))
		}
	})
}

// FuzzParseInteraction: ParseInteraction never panics, and what it accepts
// is a block_actions interaction with one action by a user.
func FuzzParseInteraction(f *testing.F) {
	f.Add([]byte(`payload=%7B%22type%22%3A%22block_actions%22%2C%22user%22%3A%7B%22id%22%3A%22U1%22%7D%2C%22actions%22%3A%5B%7B%22action_id%22%3A%22close_ticket%22%2C%22value%22%3A%22x%22%7D%5D%7D`))
	f.Add([]byte(`payload=`))
	f.Add([]byte(`payload=%7B%7D`))
	f.Add([]byte(`payload=null`))
	f.Add([]byte(`%zz`))
	f.Add([]byte(`payload=%5B%5D&payload=2`))
	f.Fuzz(func(t *testing.T, body []byte) {
		in, verr := ParseInteraction(body)
		if verr != nil {
			require.Equal(t, http.StatusBadRequest, verr.Status)
			return
		}
		require.Equal(t, "block_actions", in.Type)
		require.Len(t, in.Actions, 1)
		require.Regexp(t, slackIDRe, in.User.ID)
	})
}
