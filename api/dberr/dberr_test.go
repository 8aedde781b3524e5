package dberr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/puddle/v2"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/api/internal/apitest"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		err  error
		want Kind
	}{
		"invalid text":      {&pgconn.PgError{Code: "22P02"}, BadInput},
		"out of range":      {wrap(&pgconn.PgError{Code: "22008"}), BadInput},
		"admin shutdown":    {&pgconn.PgError{Code: "57P01"}, Unavailable},
		"statement timeout": {&pgconn.PgError{Code: "57014"}, Unavailable},
		"too many conns":    {&pgconn.PgError{Code: "53300"}, Unavailable},
		"connection lost":   {&pgconn.PgError{Code: "08006"}, Unavailable},
		"serialization":     {&pgconn.PgError{Code: "40001"}, Unavailable},
		"syntax error":      {&pgconn.PgError{Code: "42601"}, Internal},
		"unique violation":  {&pgconn.PgError{Code: "23505"}, Internal},
		"deadline":          {wrap(context.DeadlineExceeded), Unavailable},
		"closed pool":       {wrap(puddle.ErrClosedPool), Unavailable},
		"net error":         {wrap(&net.OpError{Op: "dial", Err: errors.New("connection refused")}), Unavailable},
		"eof":               {wrap(io.ErrUnexpectedEOF), Unavailable},
		"other":             {errors.New("boom"), Internal},
		"nil":               {nil, Internal},
	} {
		require.Equal(t, tc.want, Classify(tc.err), name)
	}
}

// TestAbort: each Kind gets its status and the contract's error shape, and
// the error is not attached to the context (the caller logs it, once; the
// access log would otherwise log it again).
func TestAbort(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		err    error
		status int
		body   string
	}{
		"unavailable": {wrap(context.DeadlineExceeded), 503,
			`{"error":{"code":"unavailable","message":"the database is unavailable while doing x; retry later","field":null}}`},
		"bad input": {&pgconn.PgError{Code: "22P02", Message: "invalid input syntax"}, 400,
			`{"error":{"code":"invalid_request","message":"the database refused a value: invalid input syntax","field":null}}`},
		"internal": {errors.New("secret detail"), 500,
			`{"error":{"code":"internal","message":"internal error","field":null}}`},
	} {
		w := httptest.NewRecorder()
		c, _ := gin.CreateTestContext(w)
		Abort(c, tc.err, "doing x")
		require.Equal(t, tc.status, w.Code, name)
		require.JSONEq(t, tc.body, w.Body.String(), name)
		require.True(t, c.IsAborted(), name)
		require.Empty(t, c.Errors, name)
	}
}

// TestConnectFailureIsUnavailable: a server that answers but refuses the
// connection (database missing, 3D000; login refused, 28000) makes every
// request 503, as /readyz does, not 500: the PgError inside the connect
// error must not be classified by its SQLSTATE.
func TestConnectFailureIsUnavailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, tc := range map[string]struct {
		url   string
		state string
	}{
		"missing database": {apitest.MissingDatabaseURL(t), "3D000"},
		"missing role":     {apitest.MissingRoleURL(t), "28000"},
	} {
		pool, err := pgxpool.New(ctx, tc.url)
		require.NoError(t, err, name)
		t.Cleanup(pool.Close)
		_, err = pool.Exec(ctx, "SELECT 1")
		require.Error(t, err, name)
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr, name)
		require.Equal(t, tc.state, pgErr.Code, name)

		require.Equal(t, Unavailable, Classify(err), name)
		require.Equal(t, Unavailable, Classify(wrap(err)), name)
		w := httptest.NewRecorder()
		c, _ := gin.CreateTestContext(w)
		Abort(c, wrap(err), "doing x")
		require.Equal(t, 503, w.Code, name)
		require.JSONEq(t, `{"error":{"code":"unavailable","message":"the database is unavailable while doing x; retry later","field":null}}`, w.Body.String(), name)
	}
}

func wrap(err error) error { return fmt.Errorf("doing something: %w", err) }
