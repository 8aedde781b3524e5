package httperr

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/require"
)

// TestAbortShape: the body always has "field", null when no input is
// named, so every status has the contract's one shape.
func TestAbortShape(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status           int
		code, msg, field string
		want             string
	}{
		{http.StatusBadRequest, CodeInvalid, "limit: must be an integer", "limit",
			`{"error":{"code":"invalid_request","message":"limit: must be an integer","field":"limit"}}`},
		{http.StatusUnauthorized, CodeUnauthenticated, "an API key is required", "",
			`{"error":{"code":"unauthenticated","message":"an API key is required","field":null}}`},
		{http.StatusNotFound, CodeNotFound, "no such route", "",
			`{"error":{"code":"not_found","message":"no such route","field":null}}`},
	} {
		w := httptest.NewRecorder()
		c, _ := gin.CreateTestContext(w)
		Abort(c, tc.status, tc.code, tc.msg, tc.field)
		require.Equal(t, tc.status, w.Code)
		require.Equal(t, tc.want, w.Body.String())
		require.True(t, c.IsAborted())

		// A client decoding into Body reads null as no field.
		var b Body
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &b))
		require.Equal(t, Detail{Code: tc.code, Message: tc.msg, Field: tc.field}, b.Error)
	}
}
