package slack

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Slack's request-signing headers and version.
const (
	HeaderSignature = "X-Slack-Signature"
	HeaderTimestamp = "X-Slack-Request-Timestamp"
	signatureV0     = "v0"
)

// MaxSkew is how far a request's timestamp may be from now, either way: an
// older request may be a replay.
const MaxSkew = 5 * time.Minute

// Verification failures. All of them answer 401.
var (
	ErrMissingSignature = errors.New("missing Slack signature or timestamp")
	ErrBadTimestamp     = errors.New("the Slack request timestamp is not a Unix time")
	ErrStale            = errors.New("the Slack request timestamp is more than 5 minutes from now")
	ErrBadSignature     = errors.New("the Slack signature does not match")
)

// Sign returns the v0 signature Slack sends for body at timestamp ts:
// "v0=" + hex(HMAC-SHA256(secret, "v0:{ts}:{body}")).
func Sign(secret []byte, ts string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(signatureV0 + ":" + ts + ":"))
	mac.Write(body)
	return signatureV0 + "=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify checks a Slack request's signature headers against body, as
// Slack's "verifying requests" guide prescribes: the timestamp within
// MaxSkew of now, and the v0 signature equal, compared in constant time.
func Verify(secret []byte, h http.Header, body []byte, now time.Time) error {
	sig, ts := h.Get(HeaderSignature), h.Get(HeaderTimestamp)
	if sig == "" || ts == "" {
		return ErrMissingSignature
	}
	if len(ts) > 12 || strings.TrimLeft(ts, "0123456789") != "" {
		return ErrBadTimestamp
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return ErrBadTimestamp
	}
	if d := now.Sub(time.Unix(sec, 0)); d > MaxSkew || d < -MaxSkew {
		return ErrStale
	}
	if !hmac.Equal([]byte(sig), []byte(Sign(secret, ts, body))) {
		return ErrBadSignature
	}
	return nil
}
