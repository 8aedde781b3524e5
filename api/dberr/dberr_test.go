package dberr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
	"github.com/stretchr/testify/require"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	wrap := func(err error) error { return fmt.Errorf("doing something: %w", err) }
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
