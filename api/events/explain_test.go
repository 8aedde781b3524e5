package events

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

// planNode is the part of EXPLAIN (FORMAT JSON) output the test reads.
type planNode struct {
	NodeType  string     `json:"Node Type"`
	IndexName string     `json:"Index Name"`
	Relation  string     `json:"Relation Name"`
	Plans     []planNode `json:"Plans"`
}

// scans lists "Node Type[:index]" of every scan in the plan.
func (n planNode) scans() []string {
	var out []string
	if strings.Contains(n.NodeType, "Scan") {
		s := n.NodeType
		if n.IndexName != "" {
			// Partition index names differ only by the partition prefix.
			s += ":" + n.IndexName[strings.Index(n.IndexName, "_p20")+len("_p202610_"):]
		}
		out = append(out, s)
	}
	for _, c := range n.Plans {
		out = append(out, c.scans()...)
	}
	return out
}

func parsePlan(t *testing.T, raw []byte) planNode {
	t.Helper()
	var plans []struct {
		Plan planNode `json:"Plan"`
	}
	require.NoError(t, json.Unmarshal(raw, &plans))
	require.Len(t, plans, 1)
	return plans[0].Plan
}

// TestQueryPlansUseIndexes runs EXPLAIN on the page query for each filter,
// alone and with a time window, with one value and with several, as custom
// and as generic plans (the statement cache makes PostgreSQL switch to a
// generic plan after five executions), and on the export's SELECT: no plan
// may contain a sequential scan. 20,000 analysed rows in two partitions.
func TestQueryPlansUseIndexes(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	bulkInsert(t, pool, time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC), 200, 10_000)
	bulkInsert(t, pool, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), 200, 10_000)
	analyze(t, pool)
	ctx := context.Background()

	from := time.Date(2026, 10, 20, 0, 0, 0, 0, time.UTC)
	window := func(f Filters) Filters { f.From, f.To = from, from.Add(14*24*time.Hour); return f }
	cases := map[string]Filters{
		"workspace only":       {},
		"actor_email":          {ActorEmails: []string{"user7@acme.io"}},
		"actor_email many":     {ActorEmails: []string{"user7@acme.io", "user8@acme.io"}},
		"actor_id":             {ActorIDs: []string{"u_7"}},
		"actor_id many":        {ActorIDs: []string{"u_7", "u_8", "u_9"}},
		"action":               {Actions: []string{"ticket.update"}},
		"action many":          {Actions: []string{"member.invite", "ticket.update"}},
		"action prefix":        {Actions: []string{"ticket.*"}},
		"action mixed":         {Actions: []string{"member.invite", "ticket.*"}},
		"resource_type":        {ResourceTypes: []string{"ticket"}},
		"resource_type many":   {ResourceTypes: []string{"member", "ticket"}},
		"source":               {Sources: []string{"web"}},
		"source many":          {Sources: []string{"api", "web"}},
		"actor_email + source": {ActorEmails: []string{"user7@acme.io"}, Sources: []string{"web"}},
	}
	names := make([]string, 0, 2*len(cases))
	for name := range cases {
		names = append(names, name, name+" + window")
	}
	for _, name := range names {
		if base, ok := strings.CutSuffix(name, " + window"); ok {
			cases[name] = window(cases[base])
		}
	}
	slices.Sort(names)

	before := &position{OccurredAt: time.Date(2026, 11, 15, 0, 0, 0, 0, time.UTC), ID: uuid.Max}
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	for _, name := range names {
		f := cases[name]
		for _, cur := range []*position{nil, before} {
			sql, args := querySQL("ws_a", f, cur, LimitDefault+1)
			label := name
			if cur != nil {
				label += " + cursor"
			}
			var raw []byte
			require.NoError(t, conn.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+sql, args...).Scan(&raw))
			custom := parsePlan(t, raw).scans()
			generic := genericPlan(t, conn.Conn(), sql, args)
			t.Logf("%-38s custom %v; generic %v", label, custom, generic)
			for _, s := range append(custom, generic...) {
				require.NotContains(t, s, "Seq Scan", "%s: custom %v, generic %v", label, custom, generic)
			}
		}
		// The export's SELECT, arguments set as in Export.
		settings, args, sel := exportSelect("ws_a", f, true)
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, settings, args...)
		require.NoError(t, err)
		var raw []byte
		require.NoError(t, tx.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+sel).Scan(&raw))
		require.NoError(t, tx.Rollback(ctx))
		scans := parsePlan(t, raw).scans()
		t.Logf("%-38s export %v", name, scans)
		// An export reads every matching row, so for a filter matching a
		// large share of the workspace (actions, sources and types here
		// match 1/5-4/5 of it) a sequential scan and sort is the right
		// plan. Selective filters must use their index.
		if strings.HasPrefix(name, "actor_") {
			for _, s := range scans {
				require.NotContains(t, s, "Seq Scan", "export %s: %v", name, scans)
			}
		}
	}
}

// genericPlan returns the scans of the generic plan of sql: PREPAREd, then
// EXPLAIN EXECUTE under plan_cache_mode = force_generic_plan. The test's
// own constant arguments are interpolated by pgx's simple protocol.
func genericPlan(t *testing.T, conn *pgx.Conn, sql string, args []any) []string {
	t.Helper()
	ctx := context.Background()
	_, err := conn.Exec(ctx, "PREPARE plan_probe AS "+sql)
	require.NoError(t, err)
	defer func() {
		_, err := conn.Exec(ctx, "DEALLOCATE plan_probe")
		require.NoError(t, err)
	}()
	placeholders := make([]string, len(args))
	for i := range args {
		placeholders[i] = fmt.Sprintf("$%d", i+1)
	}
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, "SET LOCAL plan_cache_mode = force_generic_plan")
	require.NoError(t, err)
	var raw []byte
	err = tx.QueryRow(ctx, "EXPLAIN (FORMAT JSON) EXECUTE plan_probe("+strings.Join(placeholders, ", ")+")",
		append([]any{pgx.QueryExecModeSimpleProtocol}, args...)...).Scan(&raw)
	require.NoError(t, err)
	return parsePlan(t, raw).scans()
}
