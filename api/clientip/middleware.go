package clientip

import (
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/auditlog/auditlog/outbox"
)

// RequestIDHeader carries the request id in and out.
const RequestIDHeader = "X-Request-ID"

// maxRequestIDLen bounds a caller-supplied request id (the contract's
// request_id limit).
const maxRequestIDLen = 128

const ginRequestIDKey = "auditlog.request_id"

// RequestContext returns middleware that puts outbox.RequestInfo (source,
// client IP by resolver, user agent, request id) on the request's context, so
// events recorded while handling it carry them, and echoes the request id in
// the X-Request-ID response header.
//
// An incoming X-Request-ID is believed only when the socket peer is a
// trusted proxy (the same rule as X-Forwarded-For: a load balancer or
// gateway of our own may name the request, a client may not) and it is
// 1–128 printable ASCII characters without spaces. Otherwise a new UUIDv7
// is generated, so a client can never plant an id on recorded events.
func RequestContext(resolver *Resolver, source string) gin.HandlerFunc {
	return func(c *gin.Context) {
		id := incomingRequestID(resolver, c.Request)
		if id == "" {
			id = newRequestID()
		}
		c.Set(ginRequestIDKey, id)
		c.Header(RequestIDHeader, id)

		info, _ := outbox.RequestInfoFrom(c.Request.Context())
		info.Source = source
		info.RequestID = id
		info.UserAgent = c.Request.UserAgent()
		info.IP = ""
		if ip := resolver.ClientIP(c.Request); ip.IsValid() {
			info.IP = ip.String()
		}
		c.Request = c.Request.WithContext(outbox.WithRequestInfo(c.Request.Context(), info))
		c.Next()
	}
}

// RequestID returns the request id RequestContext assigned, or "".
func RequestID(c *gin.Context) string { return c.GetString(ginRequestIDKey) }

// incomingRequestID returns the request's X-Request-ID when it may be
// believed (see RequestContext), else "".
func incomingRequestID(resolver *Resolver, req *http.Request) string {
	peer := socketAddr(req.RemoteAddr)
	if !peer.IsValid() || !resolver.Trusted(peer) {
		return ""
	}
	id := req.Header.Get(RequestIDHeader)
	if !saneRequestID(id) {
		return ""
	}
	return id
}

func saneRequestID(s string) bool {
	if s == "" || len(s) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// newRequestID returns a UUIDv7: time-ordered, so ids sort like requests.
// NewV7 fails only if crypto/rand does, which Go treats as fatal anyway.
func newRequestID() string { return uuid.Must(uuid.NewV7()).String() }
