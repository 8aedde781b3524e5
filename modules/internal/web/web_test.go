package web

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/api/httperr"
)

func TestUUID(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		"01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77",
		"01936A5E-7C1F-7B3A-9D0E-2F5C1A9B8E77",
	} {
		id, verr := UUID("f", s, "must be a UUID")
		require.Nil(t, verr, s)
		require.Equal(t, "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77", id.String())
	}
	for _, s := range []string{
		"", "t_1",
		"01936a5e7c1f7b3a9d0e2f5c1a9b8e77",
		"{01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77}",
		"urn:uuid:01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77",
		"01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e7g",
	} {
		_, verr := UUID("ticket_id", s, "must be a ticket id (UUID)")
		require.Equal(t, &Error{Status: http.StatusBadRequest, Code: httperr.CodeInvalid, Field: "ticket_id",
			Message: "must be a ticket id (UUID)"}, verr, s)
	}
}

func TestCheckDeps(t *testing.T) {
	t.Parallel()
	require.EqualError(t, CheckDeps("tickets", nil, nil), "tickets: pool is nil")
}
