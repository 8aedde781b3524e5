package outbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

// TestCopyMatchesInsert: RecordBatch encodes COPY's binary format by hand,
// Record's INSERT goes through pgx's encoders. The same events written both
// ways are stored identically, column for column, across the values each
// column type can take: NULLs, IPv4, IPv6, an IPv4-mapped address, a null
// IP by source, non-ASCII text, times before 2000 and with milliseconds.
func TestCopyMatchesInsert(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	now := time.Date(2026, 11, 26, 9, 30, 1, 987_654_321, time.UTC)
	r, err := outbox.New(outbox.Options{Now: func() time.Time { return now }, RetentionDays: 30000})
	require.NoError(t, err)

	es := []outbox.Event{
		sampleEvent(1),
		{WorkspaceID: "ws_min", Action: "login.fail", Actor: outbox.Actor{Type: "system"}},
		{WorkspaceID: "ws_v6", Action: "member.invite", IP: "2001:db8::8a2e:370:7334",
			OccurredAt: time.Date(1999, 12, 31, 23, 59, 59, 999_000_000, time.UTC),
			Actor:      outbox.Actor{Type: "user", ID: "u_ü", Email: "Zoë@Example.com", Name: "Zoë Ünïcødé 😀"}},
		{WorkspaceID: "ws_mapped", Action: "member.remove", IP: "::ffff:198.51.100.4",
			Actor: outbox.Actor{Type: "api_key", ID: "key_1"}, Details: map[string]any{"a": "\u2028", "b": 1.5e300}},
		{WorkspaceID: "ws_slack", Action: "ticket.close", Source: "slack", IP: "203.0.113.9",
			Actor: outbox.Actor{Type: "user", ID: "u_2"}, Resource: outbox.Resource{Type: "ticket"}},
		{WorkspaceID: "ws_edge", Action: "ticket.update", IP: "0.0.0.0", UserAgent: "curl/8 \t tab",
			OccurredAt: time.Date(1970, 1, 1, 0, 0, 0, 1_000_000, time.UTC),
			Actor:      outbox.Actor{Type: "service", ID: "svc"}, Resource: outbox.Resource{Type: "ticket", IDs: map[string]any{"n": 12345678901234}}},
	}
	for i := range es {
		es[i].ID = fmt.Sprintf("01936a5e-7c1f-7b3a-9d0e-%012d", i)
		if es[i].Source == "" {
			es[i].Source = "api"
		}
	}
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, e := range es {
			if err := r.Record(ctx, tx, e); err != nil {
				return err
			}
		}
		return r.RecordBatch(ctx, tx, es)
	}))

	// Each id has two rows; every column but pos agrees between them.
	rows, err := pool.Query(ctx, `
SELECT id::text, count(*),
       count(DISTINCT (workspace_id, occurred_at, recorded_at, action, actor_type, actor_id,
                       actor_email, actor_name, resource_type, resource_ids, resource_ids_flat,
                       source, ip, user_agent, request_id, details)),
       count(*) FILTER (WHERE ip IS NULL)
FROM audit_outbox GROUP BY id ORDER BY id`)
	require.NoError(t, err)
	type group struct {
		ID                   string
		Rows, Distinct, Null int
	}
	groups, err := pgx.CollectRows(rows, pgx.RowToStructByPos[group])
	require.NoError(t, err)
	require.Len(t, groups, len(es))
	for i, g := range groups {
		require.Equal(t, es[i].ID, g.ID)
		require.Equal(t, 2, g.Rows, g.ID)
		require.Equal(t, 1, g.Distinct, "event %d is stored differently by COPY and by INSERT", i)
	}
	require.Equal(t, 2, groups[1].Null, "no IP is NULL both ways")
	require.Equal(t, 2, groups[4].Null, "a Slack event's IP is NULL both ways")

	// And the values are the ones meant, not the same mistake twice.
	var ip6, ip4, occurred, name string
	require.NoError(t, pool.QueryRow(ctx, `
SELECT (SELECT host(ip) FROM audit_outbox WHERE id = $1 LIMIT 1),
       (SELECT host(ip) FROM audit_outbox WHERE id = $2 LIMIT 1),
       (SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') FROM audit_outbox WHERE id = $1 LIMIT 1),
       (SELECT actor_name FROM audit_outbox WHERE id = $1 LIMIT 1)`, es[2].ID, es[3].ID).Scan(&ip6, &ip4, &occurred, &name))
	require.Equal(t, "2001:db8::8a2e:370:7334", ip6)
	require.Equal(t, "198.51.100.4", ip4, "an IPv4-mapped address is stored as IPv4")
	require.Equal(t, "1999-12-31 23:59:59.999", occurred)
	require.Equal(t, "Zoë Ünïcødé 😀", name)
}

// TestCopyOfManyRows: a batch larger than one block of COPY data arrives
// whole, in order.
func TestCopyOfManyRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	es := make([]outbox.Event, 3000)
	for i := range es {
		es[i] = sampleEvent(i)
		es[i].Details = map[string]any{"i": i, "pad": fmt.Sprintf("%0*d", i%700, 0)}
	}
	var ids []string
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) (err error) {
		ids, err = outbox.Default().RecordBatchIDs(ctx, tx, es)
		return err
	}))
	var n int
	var inOrder bool
	require.NoError(t, pool.QueryRow(ctx, `
SELECT count(*), array_agg(id::text ORDER BY pos) = $1::text[] FROM audit_outbox`, ids).Scan(&n, &inOrder))
	require.Equal(t, len(es), n)
	require.True(t, inOrder, "rows are stored in batch order")
	var badDetails int
	require.NoError(t, pool.QueryRow(ctx, `
SELECT count(*) FROM audit_outbox
WHERE (details::jsonb ->> 'i')::int <> (SELECT i - 1 FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, i) WHERE u.id = audit_outbox.id)`,
		ids).Scan(&badDetails))
	require.Zero(t, badDetails, "each row carries its own event's details")
}
