package events

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/outbox"
)

// An export intent makes "every export is recorded" hold through crashes
// and database outages, not only when the handler reaches its end:
//
//  1. before streaming, the intent (who, from where, which filters) is
//     inserted and its advisory lock taken on the exporting connection; if
//     that fails the export is refused (fail closed);
//  2. at the end, the audit_log.export event is recorded and the intent
//     deleted in one transaction;
//  3. if the process or its connection dies in between, the session lock
//     goes with it, and SweepInterruptedExports records the intent as an
//     incomplete export with an unknown row count.

// intentLockBase offsets intent ids into their own advisory-lock key space
// ("EX" in the top bytes), away from the partition maintenance key.
const intentLockBase int64 = 0x4558 << 48

const (
	insertIntentSQL = `INSERT INTO audit_export_intents (payload) VALUES ($1) RETURNING id`
	lockIntentSQL   = `SELECT pg_advisory_lock($1::bigint + $2::bigint)`
	unlockIntentSQL = `SELECT pg_advisory_unlock($1::bigint + $2::bigint)`
	deleteIntentSQL = `DELETE FROM audit_export_intents WHERE id = $1`
	// sweepIntentsSQL claims intents whose exporting session is gone: their
	// advisory lock can be taken (held until this transaction ends).
	sweepIntentsSQL = `
SELECT id, payload FROM audit_export_intents
WHERE pg_try_advisory_xact_lock($1::bigint + id)
ORDER BY id
LIMIT 100
FOR UPDATE SKIP LOCKED`
)

// exportIntent is what is needed to record an export's event later.
type exportIntent struct {
	WS    string             `json:"workspace_id"`
	Actor outbox.Actor       `json:"actor"`
	Info  outbox.RequestInfo `json:"request"`
	// Filters as exportFilters renders them.
	Filters map[string]any `json:"filters"`
	// Format is FormatCSV or FormatNDJSON; empty (intents written before
	// ndjson existed) means csv.
	Format string `json:"format,omitempty"`
	// Source is the event's source; empty (older intents) means api.
	Source string `json:"source,omitempty"`
}

// Intent is an export written down as begun: [BeginExportIntent] before the
// first byte, [Intent.End] after the last. The HTTP export and the
// `auditlog export` command both go through it, so neither can stream
// events without the export being recorded, even if the process dies.
type Intent struct {
	id   int64
	conn *pgx.Conn
	in   exportIntent
}

// BeginExportIntent records that actor, from source, starts exporting
// workspace's events matching f in format, with the request information in
// ctx (address, user agent, request id), and takes the intent's lock on
// conn, which must stay the exporting connection until End. When it fails
// the export must not start: that is what makes the record fail-closed.
func BeginExportIntent(ctx context.Context, conn *pgx.Conn, workspace string, f Filters, format string, actor outbox.Actor, source string) (*Intent, error) {
	in := exportIntent{WS: workspace, Actor: actor, Filters: exportFilters(f), Format: format, Source: source}
	if info, ok := outbox.RequestInfoFrom(ctx); ok {
		in.Info = info
	}
	id, err := beginIntent(ctx, conn, in)
	if err != nil {
		return nil, err
	}
	return &Intent{id: id, conn: conn, in: in}, nil
}

// End records the audit_log.export event (rows written and whether the
// export completed) and deletes the intent in one transaction on pool, then
// releases the intent's lock. If recording fails, the intent stays for
// SweepInterruptedExports and the error is returned: the export must not be
// presented as complete. ctx should outlive a cancelled export (use
// context.WithoutCancel); its request information is kept on the event.
func (i *Intent) End(ctx context.Context, pool *pgxpool.Pool, rec *outbox.Recorder, rows int64, complete bool) error {
	err := recordAndEnd(ctx, pool, rec, i.id, i.in.event(&rows, complete))
	unlockIntent(ctx, i.conn, i.id)
	if err != nil {
		return fmt.Errorf("recording the export event: %w", err)
	}
	return nil
}

// beginIntent records the intent and takes its lock on conn, which must
// stay the exporting connection until endIntent.
func beginIntent(ctx context.Context, conn *pgx.Conn, in exportIntent) (int64, error) {
	payload, err := json.Marshal(in)
	if err != nil {
		return 0, fmt.Errorf("encoding export intent: %w", err)
	}
	var id int64
	if err := conn.QueryRow(ctx, insertIntentSQL, string(payload)).Scan(&id); err != nil {
		return 0, fmt.Errorf("recording export intent: %w", err)
	}
	if _, err := conn.Exec(ctx, lockIntentSQL, intentLockBase, id); err != nil {
		return 0, fmt.Errorf("locking export intent: %w", err)
	}
	return id, nil
}

// recordAndEnd records e and deletes intent id in one transaction on pool.
func recordAndEnd(ctx context.Context, pool *pgxpool.Pool, rec *outbox.Recorder, id int64, e outbox.Event) error {
	return outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := rec.Record(ctx, tx, e); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, deleteIntentSQL, id)
		return err
	})
}

// unlockIntent releases the session lock if conn is still alive (a closed
// connection released it already). If the unlock fails the connection is
// closed, so it never goes back to the pool holding the lock.
func unlockIntent(ctx context.Context, conn *pgx.Conn, id int64) {
	if conn.IsClosed() {
		return
	}
	if _, err := conn.Exec(ctx, unlockIntentSQL, intentLockBase, id); err != nil {
		_ = conn.Close(ctx)
	}
}

// SweepInterruptedExports records every export whose session died before
// recording it, as an audit_log.export event with details.complete false
// and details.rows null (unknown), and returns how many it recorded. Safe
// to run from several instances at once.
func SweepInterruptedExports(ctx context.Context, pool *pgxpool.Pool, rec *outbox.Recorder) (int, error) {
	total := 0
	for {
		n, err := sweepOnce(ctx, pool, rec)
		total += n
		if err != nil || n == 0 {
			return total, err
		}
	}
}

func sweepOnce(ctx context.Context, pool *pgxpool.Pool, rec *outbox.Recorder) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, sweepIntentsSQL, intentLockBase)
		if err != nil {
			return err
		}
		type claimed struct {
			id      int64
			payload string
		}
		var cs []claimed
		for rows.Next() {
			var c claimed
			if err := rows.Scan(&c.id, &c.payload); err != nil {
				rows.Close()
				return err
			}
			cs = append(cs, c)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for _, c := range cs {
			var in exportIntent
			if err := json.Unmarshal([]byte(c.payload), &in); err != nil {
				return fmt.Errorf("decoding export intent %d: %w", c.id, err)
			}
			e := in.event(nil, false)
			if err := rec.Record(outbox.WithRequestInfo(ctx, in.Info), tx, e); err != nil {
				return fmt.Errorf("recording interrupted export %d: %w", c.id, err)
			}
			if _, err := tx.Exec(ctx, deleteIntentSQL, c.id); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sweeping interrupted exports: %w", err)
	}
	return n, nil
}

// event is the audit_log.export event of the intent; rows nil means unknown.
func (in exportIntent) event(rows *int64, complete bool) outbox.Event {
	details := map[string]any{
		"filters":  in.Filters,
		"format":   cmp.Or(in.Format, FormatCSV),
		"complete": complete,
		"rows":     nil,
	}
	if rows != nil {
		details["rows"] = *rows
	}
	return outbox.Event{
		WorkspaceID: in.WS,
		Action:      ExportAction,
		Actor:       in.Actor,
		Source:      cmp.Or(in.Source, "api"),
		Details:     details,
	}
}
