package health

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/api/internal/apitest"
	"github.com/auditlog/auditlog/internal/testdb"
)

func serve(t *testing.T, pool *pgxpool.Pool) func(path string) (int, string) {
	t.Helper()
	gin.SetMode(gin.ReleaseMode)
	h, err := New(pool, slog.New(slog.NewTextHandler(io.Discard, nil)), 0)
	require.NoError(t, err)
	engine := gin.New()
	h.Register(engine)
	return func(path string) (int, string) {
		w := httptest.NewRecorder()
		engine.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		return w.Code, w.Body.String()
	}
}

func TestReady(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	get := serve(t, pool)
	code, body := get("/healthz")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"status":"ok"}`, body)
	code, body = get("/readyz")
	require.Equal(t, http.StatusOK, code, body)
	require.JSONEq(t, `{"status":"ready"}`, body)
}

func TestNotReadyWhileMigrationsPending(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	// Forget that the latest migration ran: goose now sees it pending.
	const forgetLatest = `DELETE FROM goose_db_version
		WHERE version_id = (SELECT max(version_id) FROM goose_db_version)
		RETURNING version_id`
	var latest int64
	require.NoError(t, pool.QueryRow(ctx, forgetLatest).Scan(&latest))
	require.Positive(t, latest)

	get := serve(t, pool)
	code, body := get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code, body)
	var eb httperr.Body
	require.NoError(t, json.Unmarshal([]byte(body), &eb))
	require.Equal(t, httperr.CodeUnavailable, eb.Error.Code)
	require.Contains(t, eb.Error.Message, "migrations are pending")

	// Not latched while pending: once applied (here: restored), ready.
	_, err := pool.Exec(ctx, `INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, true)`, latest)
	require.NoError(t, err)
	code, body = get("/readyz")
	require.Equal(t, http.StatusOK, code, body)

	// Latched once applied: the migration state is not read again.
	require.NoError(t, pool.QueryRow(ctx, forgetLatest).Scan(&latest))
	code, _ = get("/readyz")
	require.Equal(t, http.StatusOK, code)
}

func TestNotReadyWithoutDatabase(t *testing.T) {
	t.Parallel()
	pool := apitest.DeadPool(t)

	get := serve(t, pool)
	code, _ := get("/healthz")
	require.Equal(t, http.StatusOK, code, "liveness does not depend on the database")
	code, body := get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code, body)
	require.Contains(t, body, "unreachable")
}
