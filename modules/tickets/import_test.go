package tickets

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDecodeImport(t *testing.T) {
	t.Parallel()
	got, verr := decodeImport(strings.NewReader(` [ {"subject":" a ","external_ref":" x "}, {"subject":"b","status":"closed","priority":"high"} ] `), 10)
	require.Nil(t, verr)
	require.Equal(t, []importTicket{
		{Subject: "a", Status: "open", Priority: "normal", ExternalRef: "x"},
		{Subject: "b", Status: "closed", Priority: "high"},
	}, got)

	cases := []struct {
		body   string
		status int
		field  string
	}{
		{``, 400, ""},
		{`{}`, 400, ""},
		{`"x"`, 400, ""},
		{`[]`, 400, ""},
		{`[{"subject":"a"}`, 400, ""},
		{`[{"subject":"a"}]]`, 400, ""},
		{`[{"subject":"a"}] {}`, 400, ""},
		{`[{"subject":"a"},{"subject":""}]`, 400, "[1].subject"},
		{`[{"subject":"a"},null]`, 400, "[1].subject"},
		{`[{"subject":"a"},[1]]`, 400, "[1]"},
		{`[{"subject":"a","x":1}]`, 400, "[0].x"},
		{`[{"subject":1}]`, 400, "[0].subject"},
		{`[{"subject":"a","external_ref":"r"},{"subject":"b","external_ref":"r"}]`, 400, "[1].external_ref"},
		{`[{"subject":"a\u0000"}]`, 400, "[0].subject"},
		{`[` + strings.Repeat(`{"subject":"a"},`, 10) + `{"subject":"a"}]`, 413, ""},
	}
	for _, tc := range cases {
		_, verr := decodeImport(strings.NewReader(tc.body), 10)
		require.NotNil(t, verr, tc.body)
		require.Equal(t, tc.status, verr.Status, tc.body)
		require.Equal(t, tc.field, verr.Field, tc.body)
	}
}

// FuzzDecodeImport: decodeImport never panics, refuses with 400 or 413, and
// what it accepts satisfies the table's checks.
func FuzzDecodeImport(f *testing.F) {
	f.Add([]byte(`[{"subject":"a"}]`))
	f.Add([]byte(`[{"subject":"a","body":"b","status":"pending","priority":"low","external_ref":"z-1"}]`))
	f.Add([]byte(`[{"subject":"a"},{"subject":"a","external_ref":" "}]`))
	f.Add([]byte(`[1e999]`))
	f.Add([]byte(`[{"subject":"\ud800"}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, verr := decodeImport(bytes.NewReader(body), 5)
		if verr != nil {
			require.Contains(t, []int{http.StatusBadRequest, http.StatusRequestEntityTooLarge}, verr.Status)
			return
		}
		require.NotEmpty(t, got)
		require.LessOrEqual(t, len(got), 5)
		for _, tk := range got {
			require.NotEmpty(t, tk.Subject)
			require.NotContains(t, tk.Subject+tk.Body+tk.ExternalRef, "\x00")
			require.True(t, validStatus(tk.Status))
			require.True(t, validPriority(tk.Priority))
		}
	})
}
