// Package dberr tells HTTP handlers what a database error means for the
// client: the database is unavailable (503), the input was refused by
// PostgreSQL (400), or something else went wrong (500).
package dberr

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/auditlog/auditlog/api/httperr"
)

// Kind is what a database error means to an HTTP client.
type Kind int

// Kinds of database errors.
const (
	// Internal is a bug or an unexpected server error: 500.
	Internal Kind = iota
	// Unavailable means the database could not be reached, refused the
	// connection (e.g. the database does not exist) or did not answer in
	// time; retrying later may succeed: 503.
	Unavailable
	// BadInput means PostgreSQL refused a value (SQLSTATE class 22, data
	// exception), which only client input can cause: 400.
	BadInput
)

// Classify says what err, returned by a pgx call, means to the client.
// A failure to connect is Unavailable whatever its cause; other errors from
// PostgreSQL itself are classified by SQLSTATE; transport failures
// (connection refused or reset, pool closed, no connection before the
// deadline, timeouts) are Unavailable; anything else is Internal.
func Classify(err error) Kind {
	if err == nil {
		return Internal
	}
	// Checked before the SQLSTATE: a connect attempt refused by the server
	// carries its PgError (3D000 database missing, 28xxx login refused),
	// which is the server not being usable, as /readyz says (503), not a
	// bug of ours.
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return Unavailable
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "22"):
			return BadInput
		case strings.HasPrefix(pgErr.Code, "08"), // connection exception
			strings.HasPrefix(pgErr.Code, "53"),          // insufficient resources
			strings.HasPrefix(pgErr.Code, "57"),          // operator intervention (shutdown, statement timeout)
			pgErr.Code == "40001", pgErr.Code == "40P01": // serialization failure, deadlock
			return Unavailable
		}
		return Internal
	}
	var netErr net.Error
	switch {
	case errors.As(err, &netErr),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, context.Canceled),
		errors.Is(err, puddle.ErrClosedPool),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		pgconn.Timeout(err), pgconn.SafeToRetry(err):
		return Unavailable
	}
	return Internal
}

// Abort answers err with the status its Kind implies and stops the chain.
// what says what was being done, e.g. "recording events"; it is shown only
// for Unavailable, whose message is safe to tell the client. Abort does not
// log err (nor attach it to c for the access log): the caller logs it once,
// with its own context.
func Abort(c *gin.Context, err error, what string) {
	switch Classify(err) {
	case Unavailable:
		httperr.Abort(c, 503, httperr.CodeUnavailable, "the database is unavailable while "+what+"; retry later", "")
	case BadInput:
		httperr.Abort(c, 400, httperr.CodeInvalid, "the database refused a value: "+pgMessage(err), "")
	default:
		httperr.Abort(c, 500, httperr.CodeInternal, "internal error", "")
	}
}

func pgMessage(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message
	}
	return "invalid value"
}
