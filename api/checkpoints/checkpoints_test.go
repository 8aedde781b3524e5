package checkpoints

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox/integrity"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testBundle is a handler over a fresh database with a signing key.
type testBundle struct {
	pool    *pgxpool.Pool
	signer  *integrity.Signer
	cp      *integrity.Checkpointer
	handler *Handler
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	pool := testdb.New(t)
	log := slog.New(slog.DiscardHandler)
	signer, err := integrity.GenerateKeyFile(filepath.Join(t.TempDir(), "k"))
	require.NoError(t, err)
	cp, err := integrity.NewCheckpointer(pool, signer, log)
	require.NoError(t, err)
	h, err := New(pool, signer, log)
	require.NoError(t, err)
	return &testBundle{pool: pool, signer: signer, cp: cp, handler: h}
}

// checkpoint makes one signed checkpoint of each workspace, in order.
func (b *testBundle) checkpoint(t *testing.T, workspaces ...string) {
	t.Helper()
	for _, ws := range workspaces {
		_, err := b.cp.Checkpoint(t.Context(), ws, integrity.KindManual, true)
		require.NoError(t, err)
	}
}

func readKey(ws string) auth.Key { return auth.Key{WorkspaceID: ws, Scopes: []string{auth.ScopeRead}} }

// serve runs GET /v1/checkpoints?query as key.
func serve(h *Handler, key auth.Key, query string) *httptest.ResponseRecorder {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.Use(func(c *gin.Context) { auth.SetKey(c, key); c.Next() })
	h.Register(r.Group("/v1"))
	w := httptest.NewRecorder()
	target := "/v1/checkpoints"
	if query != "" {
		target += "?" + query
	}
	r.ServeHTTP(w, httptest.NewRequest(http.MethodGet, target, nil))
	return w
}

// getPage runs GET /v1/checkpoints?query as key and decodes a 200.
func getPage(t *testing.T, h *Handler, key auth.Key, query string) (int, Response) {
	t.Helper()
	w := serve(h, key, query)
	var resp Response
	if w.Code == http.StatusOK {
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp), w.Body.String())
	}
	return w.Code, resp
}

func get(t *testing.T, h *Handler, key auth.Key) (int, Response) {
	t.Helper()
	return getPage(t, h, key, "")
}

// walk follows next_cursor from the first page with limit and returns the
// pages.
func walk(t *testing.T, h *Handler, key auth.Key, limit int) []Response {
	t.Helper()
	var pages []Response
	query := fmt.Sprintf("limit=%d", limit)
	for {
		code, resp := getPage(t, h, key, query)
		require.Equal(t, http.StatusOK, code)
		pages = append(pages, resp)
		if resp.NextCursor == nil {
			return pages
		}
		require.Less(t, len(pages), 10_000, "the walk must end")
		query = fmt.Sprintf("limit=%d&cursor=%s", limit, *resp.NextCursor)
	}
}

func TestListsTheKeysWorkspaceOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.checkpoint(t, "ws_a", "ws_b", "ws_a")
	h, signer := b.handler, b.signer

	code, resp := get(t, h, readKey("ws_a"))
	require.Equal(t, http.StatusOK, code)
	require.Len(t, resp.Data, 2)
	require.Nil(t, resp.NextCursor, "everything fits the default page")
	require.Equal(t, integrity.EncodePublicKey(signer.PublicKey()), *resp.PublicKey)
	require.Equal(t, signer.KeyID(), *resp.KeyID)
	for _, c := range resp.Data {
		require.Equal(t, "ws_a", c.WorkspaceID)
		require.NoError(t, c.VerifySignature(signer.PublicKey()), "the served checkpoint verifies as served")
	}
	require.Less(t, resp.Data[0].ID, resp.Data[1].ID, "oldest first")

	code, _ = get(t, h, auth.Key{WorkspaceID: "ws_a", Scopes: []string{auth.ScopeWrite}})
	require.Equal(t, http.StatusForbidden, code, "events:read is required")

	unsigned, err := New(b.pool, nil, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	code, resp = get(t, unsigned, readKey("ws_none"))
	require.Equal(t, http.StatusOK, code)
	require.Nil(t, resp.PublicKey)
	require.NotNil(t, resp.Data)
	require.Empty(t, resp.Data)
	require.Nil(t, resp.NextCursor)
}

// TestPagesWalkEveryCheckpointOnce walks ws_a's 7 checkpoints (interleaved
// with ws_b's) with several page sizes: every checkpoint comes exactly
// once, oldest first, every page but the last is full, and next_cursor is
// null exactly on the last page, also when the last page is full.
func TestPagesWalkEveryCheckpointOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.checkpoint(t, "ws_a", "ws_b", "ws_a", "ws_a", "ws_b", "ws_a", "ws_a", "ws_b", "ws_a", "ws_a")
	all, err := integrity.List(t.Context(), b.pool, "ws_a")
	require.NoError(t, err)
	require.Len(t, all, 7)

	for _, tc := range []struct{ limit, pages int }{{1, 7}, {2, 4}, {3, 3}, {6, 2}, {7, 1}, {LimitMax, 1}} {
		pages := walk(t, b.handler, readKey("ws_a"), tc.limit)
		require.Len(t, pages, tc.pages, "limit %d", tc.limit)
		var got []integrity.Checkpoint
		for i, p := range pages {
			if i < len(pages)-1 {
				require.Len(t, p.Data, tc.limit, "limit %d: page %d is full", tc.limit, i)
				require.NotNil(t, p.NextCursor)
			} else {
				require.NotEmpty(t, p.Data, "limit %d: no empty last page", tc.limit)
				require.Nil(t, p.NextCursor, "limit %d: last page", tc.limit)
			}
			require.Equal(t, integrity.EncodePublicKey(b.signer.PublicKey()), *p.PublicKey, "every page carries the key")
			got = append(got, p.Data...)
		}
		require.Equal(t, all, got, "limit %d: each checkpoint once, oldest first, as integrity.List has them", tc.limit)
		for _, c := range got {
			require.NoError(t, c.VerifySignature(b.signer.PublicKey()))
		}
	}

	// The page size may change between pages.
	code, first := getPage(t, b.handler, readKey("ws_a"), "limit=2")
	require.Equal(t, http.StatusOK, code)
	code, rest := getPage(t, b.handler, readKey("ws_a"), "limit=5&cursor="+*first.NextCursor)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, all, append(first.Data, rest.Data...))
	require.Nil(t, rest.NextCursor)
}

// TestCursorIsBoundToTheWorkspace: ws_a's cursor under ws_b's key is
// refused (400, field cursor) and reveals nothing of ws_a, as is an altered
// cursor; under ws_a's own key it continues.
func TestCursorIsBoundToTheWorkspace(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.checkpoint(t, "ws_a", "ws_a", "ws_a", "ws_b", "ws_b", "ws_b")
	code, first := getPage(t, b.handler, readKey("ws_a"), "limit=1")
	require.Equal(t, http.StatusOK, code)
	require.NotNil(t, first.NextCursor)
	cur := *first.NextCursor

	w := serve(b.handler, readKey("ws_b"), "limit=1&cursor="+cur)
	requireBadParam(t, w, paramCursor, "ws_a's cursor under ws_b's key")
	require.NotContains(t, w.Body.String(), "ws_a")

	flipped := []byte(cur)
	flipped[len(flipped)-1] ^= 1
	raw, err := base64.RawURLEncoding.DecodeString(cur)
	require.NoError(t, err)
	raw[0] = cursorVersion + 1
	otherVersion := base64.RawURLEncoding.EncodeToString(raw)
	raw[0] = cursorVersion
	raw[8]++ // the id, MAC unchanged
	otherID := base64.RawURLEncoding.EncodeToString(raw)
	for name, bad := range map[string]string{
		"truncated":     cur[:len(cur)-1],
		"extended":      cur + "A",
		"last char":     string(flipped),
		"padded":        cur + "=",
		"other version": otherVersion,
		"other id":      otherID,
	} {
		requireBadParam(t, serve(b.handler, readKey("ws_a"), "cursor="+url.QueryEscape(bad)), paramCursor, name)
	}

	code, rest := getPage(t, b.handler, readKey("ws_a"), "cursor="+cur)
	require.Equal(t, http.StatusOK, code)
	require.Len(t, rest.Data, 2)
	require.Equal(t, first.Data[0].ID, rest.Data[0].ID-1, "continues right after the first page")
	for _, c := range rest.Data {
		require.Equal(t, "ws_a", c.WorkspaceID)
	}

	// A second handler (another instance) shares the key through the
	// database and accepts the first one's cursor.
	other, err := New(b.pool, b.signer, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	code, again := getPage(t, other, readKey("ws_a"), "cursor="+cur)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, rest, again)
}

// requireBadParam checks w is the API's 400 naming field.
func requireBadParam(t *testing.T, w *httptest.ResponseRecorder, field, label string) {
	t.Helper()
	require.Equal(t, http.StatusBadRequest, w.Code, "%s: %s", label, w.Body.String())
	var body httperr.Body
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &body), w.Body.String())
	require.Equal(t, httperr.CodeInvalid, body.Error.Code)
	require.Equal(t, field, body.Error.Field)
	require.True(t, strings.HasPrefix(body.Error.Message, field+": "), body.Error.Message)
}

func TestBadParametersAreRefusedByName(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.checkpoint(t, "ws_a", "ws_a")
	for query, field := range map[string]string{
		"limit=0":             paramLimit,
		"limit=-1":            paramLimit,
		"limit=1001":          paramLimit,
		"limit=abc":           paramLimit,
		"limit=1.5":           paramLimit,
		"limit=":              paramLimit,
		"limit=+5x":           paramLimit,
		"limit=1&limit=2":     paramLimit,
		"cursor=abc":          paramCursor,
		"cursor=a&cursor=b":   paramCursor,
		"cursor=&cursor=":     paramCursor,
		"after=1":             "after",
		"limit=5&since=1":     "since",
		"data=1&limit=5":      "data",
		"limit=5&cursor=%3D%": "", // malformed escape: the whole query string
	} {
		w := serve(b.handler, readKey("ws_a"), query)
		if field == "" {
			require.Equal(t, http.StatusBadRequest, w.Code, query)
			require.Contains(t, w.Body.String(), "malformed query string", query)
			continue
		}
		requireBadParam(t, w, field, query)
	}
	for _, query := range []string{"limit=1", "limit=1000", "workspace_id=ws_a", "workspace_id=ws_a&limit=1"} {
		code, _ := getPage(t, b.handler, readKey("ws_a"), query)
		require.Equal(t, http.StatusOK, code, query)
	}
	// An empty cursor is no cursor: the first page.
	_, first := getPage(t, b.handler, readKey("ws_a"), "limit=1")
	code, empty := getPage(t, b.handler, readKey("ws_a"), "limit=1&cursor=")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, first, empty)
	require.NotNil(t, empty.NextCursor, "the first of two pages")
	w := serve(b.handler, readKey("ws_a"), "workspace_id=ws_b")
	require.Equal(t, http.StatusForbidden, w.Code, "another workspace is 403, as on GET /v1/events")
	require.Contains(t, w.Body.String(), `"field":"workspace_id"`)
}

// The explain test's data, written by the test only: insertRunSQL adds $2
// unsigned checkpoints to workspace $1 in a row; insertInterleavedSQL adds
// $2 to each of ws_00 .. ws_($1-1), interleaved as a schedule makes them.
const (
	insertRunSQL = `
INSERT INTO audit_checkpoints (workspace_id, seq, hash, created_at, kind)
SELECT $1, n, sha256(n::text::bytea), now(), 'scheduled'
FROM generate_series(1, $2::int) n`
	insertInterleavedSQL = `
INSERT INTO audit_checkpoints (workspace_id, seq, hash, created_at, kind)
SELECT 'ws_' || lpad(w::text, 2, '0'), n, sha256(n::text::bytea), now(), 'scheduled'
FROM generate_series(1, $2::int) n, generate_series(0, $1::int - 1) w
ORDER BY n, w`
)

// planNode is the part of EXPLAIN (FORMAT JSON) output the test reads.
type planNode struct {
	NodeType  string     `json:"Node Type"`
	IndexName string     `json:"Index Name"`
	Plans     []planNode `json:"Plans"`
}

// nodes lists "Node Type[:index]" of every node of the plan.
func (n planNode) nodes() []string {
	s := n.NodeType
	if n.IndexName != "" {
		s += ":" + n.IndexName
	}
	out := []string{s}
	for _, c := range n.Plans {
		out = append(out, c.nodes()...)
	}
	return out
}

func explain(t *testing.T, tx pgx.Tx, sql string, args ...any) []string {
	t.Helper()
	var raw []byte
	require.NoError(t, tx.QueryRow(t.Context(), "EXPLAIN (FORMAT JSON) "+sql, args...).Scan(&raw))
	var plans []struct {
		Plan planNode `json:"Plan"`
	}
	require.NoError(t, json.Unmarshal(raw, &plans))
	require.Len(t, plans, 1)
	return plans[0].Plan.nodes()
}

// TestDeepPageIsAnIndexRangeScan: over 21,000 analysed checkpoints (ws_old's
// 1,000 first, then 20 workspaces' 1,000 each, interleaved), every page
// query is a Limit over an Index Scan of audit_checkpoints_workspace_idx,
// no sort and no other scan, planned custom and generic: first and deep
// pages of ws_old (where "workspace_id = $1 AND id > $2 ORDER BY id" walks
// the primary key through all the later rows) and of ws_07. The default page
// is 100, and a walk reaches the newest checkpoint.
func TestDeepPageIsAnIndexRangeScan(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	_, err := b.pool.Exec(ctx, insertRunSQL, "ws_old", 1000)
	require.NoError(t, err)
	_, err = b.pool.Exec(ctx, insertInterleavedSQL, 20, 1000)
	require.NoError(t, err)
	_, err = b.pool.Exec(ctx, `ANALYZE audit_checkpoints`)
	require.NoError(t, err)
	var deepOld, deep07 int64
	const deepSQL = `SELECT id FROM audit_checkpoints WHERE workspace_id = $1 ORDER BY id OFFSET 900 LIMIT 1`
	require.NoError(t, b.pool.QueryRow(ctx, deepSQL, "ws_old").Scan(&deepOld))
	require.NoError(t, b.pool.QueryRow(ctx, deepSQL, "ws_07").Scan(&deep07))

	want := []string{"Limit", "Index Scan:audit_checkpoints_workspace_idx"}
	require.NoError(t, pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `PREPARE page_probe AS `+integrity.ListPageSQL)
		require.NoError(t, err)
		for _, ws := range []string{"ws_old", "ws_07", "ws_none"} {
			for _, after := range []int64{0, deepOld, deep07} {
				label := fmt.Sprintf("%s after %d", ws, after)
				require.Equal(t, want, explain(t, tx, integrity.ListPageSQL, ws, after, LimitDefault+1), "custom plan, %s", label)
				_, err = tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_generic_plan`)
				require.NoError(t, err)
				require.Equal(t, want, explain(t, tx, `EXECUTE page_probe($1, $2, 101)`, pgx.QueryExecModeSimpleProtocol, ws, after), "generic plan, %s", label)
				_, err = tx.Exec(ctx, `SET LOCAL plan_cache_mode = auto`)
				require.NoError(t, err)
			}
		}
		_, err = tx.Exec(ctx, `DEALLOCATE page_probe`)
		return err
	}))

	code, resp := get(t, b.handler, readKey("ws_07"))
	require.Equal(t, http.StatusOK, code)
	require.Len(t, resp.Data, LimitDefault, "the default page")
	require.NotNil(t, resp.NextCursor)
	pages := walk(t, b.handler, readKey("ws_old"), 300)
	require.Len(t, pages, 4)
	require.Len(t, pages[3].Data, 100)
	require.Equal(t, int64(1000), pages[3].Data[99].Seq, "the walk ends on the newest")
	for _, p := range pages {
		for _, c := range p.Data {
			require.Equal(t, "ws_old", c.WorkspaceID)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	t.Parallel()
	key := []byte("0123456789abcdef0123456789abcdef")
	for _, id := range []int64{1, 255, 1 << 40} {
		c := encodeCursor(key, id, "ws_a")
		got, err := decodeCursor(key, c, "ws_a")
		require.NoError(t, err)
		require.Equal(t, id, got)
		for name, tc := range map[string]struct {
			key []byte
			ws  string
		}{
			"other workspace": {key, "ws_b"},
			"workspace shift": {key, "ws_"},
			"other key":       {[]byte("fedcba9876543210fedcba9876543210"), "ws_a"},
		} {
			_, err := decodeCursor(tc.key, c, tc.ws)
			require.ErrorIs(t, err, errBadCursor, name)
		}
	}
}

// FuzzDecodeCursor: decoding never panics, and whatever decodes re-encodes
// to the same cursor (only genuine cursors are accepted).
func FuzzDecodeCursor(f *testing.F) {
	key := []byte("0123456789abcdef0123456789abcdef")
	good := encodeCursor(key, 42, "ws_a")
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add("")
	f.Add("AQ")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := decodeCursor(key, s, "ws_a")
		if err != nil {
			return
		}
		if again := encodeCursor(key, id, "ws_a"); again != s {
			t.Fatalf("accepted %q, which re-encodes as %q", s, again)
		}
	})
}
