package events

import (
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/auditlog/auditlog/outbox/integrity"
)

// The WHERE clause of both reads is assembled from the constants below only:
// which constants are used depends on which filters are present and how many
// values they have, and every value travels as an argument. No byte of user
// input is ever part of the SQL text. Each filter gets its own clause (rather
// than a generic "$n IS NULL OR col = ANY($n)"), so the planner sees exactly
// the predicates present and picks that filter's index; a single value uses
// "=" rather than "= ANY", which keeps the index range ordered by
// (occurred_at, id) so a page is read straight off the index.
const (
	clauseWorkspace        = "e.workspace_id = %s"
	clauseActorEmailEq     = "e.actor_email = %s"
	clauseActorEmailAny    = "e.actor_email = ANY(%s)"
	clauseActorIDEq        = "e.actor_id = %s"
	clauseActorIDAny       = "e.actor_id = ANY(%s)"
	clauseActionEq         = "e.action = %s"
	clauseActionAny        = "e.action = ANY(%s)"
	clauseActionPrefix     = "(e.action >= %s AND e.action < %s)" // action is COLLATE "C": a byte-order range
	clauseResourceTypeEq   = "e.resource_type = %s"
	clauseResourceTypeAny  = "e.resource_type = ANY(%s)"
	clauseSourceEq         = "e.source = %s"
	clauseSourceAny        = "e.source = ANY(%s)"
	clauseFrom             = "e.occurred_at >= %s"
	clauseTo               = "e.occurred_at < %s"
	clauseBefore           = "(e.occurred_at, e.id) < (%s, %s)"
	clauseOr               = " OR "
	clauseAnd              = " AND "
	typeText               = "text"
	typeTextArray          = "text[]"
	typeTimestamptz        = "timestamptz"
	typeUUID               = "uuid"
	bindParamFormat        = "$%d::%s"
	settingParamFormat     = "current_setting('auditlog.p%d')::%s"
	settingAssignFormat    = "set_config('auditlog.p%d', $%d::%s::text, true)"
	settingAssignSeparator = ", "
)

// paramStyle renders a reference to the n-th (1-based) argument of SQL type
// typ: a bind parameter for ordinary queries, a transaction-local setting for
// COPY (which takes no bind parameters).
type paramStyle func(n int, typ string) string

func bindParam(n int, typ string) string    { return fmt.Sprintf(bindParamFormat, n, typ) }
func settingParam(n int, typ string) string { return fmt.Sprintf(settingParamFormat, n, typ) }

// where accumulates clauses and their arguments.
type where struct {
	style   paramStyle
	clauses []string
	args    []any
	types   []string
}

// arg adds an argument and returns the SQL that refers to it.
func (w *where) arg(v any, typ string) string {
	w.args = append(w.args, v)
	w.types = append(w.types, typ)
	return w.style(len(w.args), typ)
}

// list adds the clause for a filter with the given values: eq for one value,
// anyOf for several, nothing for none.
func (w *where) list(eq, anyOf string, vals []string) {
	switch len(vals) {
	case 0:
	case 1:
		w.clauses = append(w.clauses, fmt.Sprintf(eq, w.arg(vals[0], typeText)))
	default:
		w.clauses = append(w.clauses, fmt.Sprintf(anyOf, w.arg(vals, typeTextArray)))
	}
}

func (w *where) actions(actions []string) {
	exact, prefixes := splitActions(actions)
	var terms []string
	switch len(exact) {
	case 0:
	case 1:
		terms = append(terms, fmt.Sprintf(clauseActionEq, w.arg(exact[0], typeText)))
	default:
		terms = append(terms, fmt.Sprintf(clauseActionAny, w.arg(exact, typeTextArray)))
	}
	for _, p := range prefixes {
		terms = append(terms, fmt.Sprintf(clauseActionPrefix, w.arg(p, typeText), w.arg(prefixUpperBound(p), typeText)))
	}
	switch len(terms) {
	case 0:
	case 1:
		w.clauses = append(w.clauses, terms[0])
	default:
		w.clauses = append(w.clauses, "("+strings.Join(terms, clauseOr)+")")
	}
}

// buildWhere returns the WHERE clause selecting workspace's events matching
// f, and its arguments. before, when set, keeps only events strictly older
// in (occurred_at, id) order: the keyset of the next page.
func buildWhere(style paramStyle, workspace string, f Filters, before *position) *where {
	w := &where{style: style}
	w.clauses = append(w.clauses, fmt.Sprintf(clauseWorkspace, w.arg(workspace, typeText)))
	w.list(clauseActorEmailEq, clauseActorEmailAny, f.ActorEmails)
	w.list(clauseActorIDEq, clauseActorIDAny, f.ActorIDs)
	w.actions(f.Actions)
	w.list(clauseResourceTypeEq, clauseResourceTypeAny, f.ResourceTypes)
	w.list(clauseSourceEq, clauseSourceAny, f.Sources)
	if !f.From.IsZero() {
		w.clauses = append(w.clauses, fmt.Sprintf(clauseFrom, w.arg(f.From, typeTimestamptz)))
	}
	if !f.To.IsZero() {
		w.clauses = append(w.clauses, fmt.Sprintf(clauseTo, w.arg(f.To, typeTimestamptz)))
	}
	if before != nil {
		w.clauses = append(w.clauses, fmt.Sprintf(clauseBefore,
			w.arg(before.OccurredAt, typeTimestamptz), w.arg(before.ID, typeUUID)))
	}
	return w
}

func (w *where) String() string { return strings.Join(w.clauses, clauseAnd) }

// position is a place in the (occurred_at, id) order.
type position struct {
	OccurredAt time.Time
	ID         uuid.UUID
}

// querySQLFormat is the page query: the filter clauses, then the limit.
const querySQLFormat = `SELECT e.seq, e.id, e.workspace_id, e.occurred_at, e.recorded_at, e.action,
       e.actor_type, e.actor_id, e.actor_email, e.actor_name, e.resource_type,
       e.resource_ids, e.source, host(e.ip), e.user_agent, e.request_id, e.details
FROM audit_events AS e
WHERE %s
ORDER BY e.occurred_at DESC, e.id DESC
LIMIT %s`

// querySQL builds the page query and its arguments; limit rows at most.
func querySQL(workspace string, f Filters, before *position, limit int) (string, []any) {
	w := buildWhere(bindParam, workspace, f, before)
	lim := w.arg(limit, "integer")
	return fmt.Sprintf(querySQLFormat, w.String(), lim), w.args
}

// Export columns, in the contract's order, named as the contract's header.
// ORDER BY and WHERE use the qualified e.* columns: an unqualified
// occurred_at in ORDER BY would mean the to_char output column and defeat
// the index order. resource_ids_flat is the empty string for an event
// without resource ids, which COPY would write as "" where every other
// empty value is a bare empty field; NULLIF makes it null, written bare.
const (
	exportColumnsPlain = `e.id,
       to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS occurred_at,
       to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS recorded_at,
       e.workspace_id, e.action, e.actor_type, e.actor_id, e.actor_email, e.actor_name,
       e.resource_type, NULLIF(e.resource_ids_flat, '') AS resource_ids, e.source, host(e.ip) AS ip,
       e.user_agent, e.request_id, e.details`
	// Every text cell that can start with a spreadsheet formula trigger
	// goes through auditlog_csv_guard (migrations 00002, 00006), which
	// prefixes it with '. The uuid, the formatted timestamps and host(ip)
	// cannot start with one, nor can actor_type, source, resource_ids and
	// details: CHECK constraints on audit_events (migration 00007) pin
	// their first character. Skipping the guard there is ~40 % of its cost.
	exportColumnsGuarded = `e.id,
       to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS occurred_at,
       to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS recorded_at,
       auditlog_csv_guard(e.workspace_id) AS workspace_id,
       auditlog_csv_guard(e.action) AS action,
       e.actor_type,
       auditlog_csv_guard(e.actor_id) AS actor_id,
       auditlog_csv_guard(e.actor_email) AS actor_email,
       auditlog_csv_guard(e.actor_name) AS actor_name,
       auditlog_csv_guard(e.resource_type) AS resource_type,
       NULLIF(e.resource_ids_flat, '') AS resource_ids,
       e.source,
       host(e.ip) AS ip,
       auditlog_csv_guard(e.user_agent) AS user_agent,
       auditlog_csv_guard(e.request_id) AS request_id,
       e.details`
	exportSelectFormat = `SELECT %s
FROM audit_events AS e
WHERE %s
ORDER BY e.occurred_at, e.id`
	exportCopyFormat = `COPY (%s) TO STDOUT WITH (FORMAT csv, HEADER true)`
	// exportSettingsFormat stores the export's arguments as transaction-local
	// settings that the COPY statement reads back with current_setting. The
	// values are bind parameters here, converted to text by PostgreSQL's own
	// output functions and parsed back by its input functions: no quoting
	// or escaping is done by this code. client_connection_check_interval
	// makes the backend notice a vanished client even while it is not
	// writing, so an abandoned export stops promptly.
	//
	// jit off and enable_sort off: the workspace arrives through
	// current_setting, so the planner assumes a large share of the table and
	// picks a parallel seq scan + external sort (665 MB of temp files and a
	// first byte after 6 s for 1M rows, PERFORMANCE.md) plus JIT. The primary
	// key (workspace_id, occurred_at, id) already gives the export order; an
	// ordered Append of its index scans streams the first row in
	// milliseconds and spills nothing.
	exportSettingsFormat = `SELECT set_config('client_connection_check_interval', '1s', true),
       set_config('jit', 'off', true),
       set_config('enable_sort', 'off', true)%s`
)

// The ndjson export: one line per event in seq order (the chain's order).
// There is no index on seq; the workspace's matching rows are sorted, so
// unlike the CSV export sorting stays enabled.
const (
	exportNDJSONSelectFormat = `SELECT ` + integrity.NDJSONLineSQL + `
FROM audit_events AS e
WHERE %s
ORDER BY e.seq`
	exportNDJSONCopyFormat     = `COPY (%s) TO STDOUT ` + integrity.NDJSONCopyOptions
	exportNDJSONSettingsFormat = `SELECT set_config('client_connection_check_interval', '1s', true),
       set_config('jit', 'off', true)%s`
)

// exportNDJSONSQL is exportSQL for the ndjson format.
func exportNDJSONSQL(workspace string, f Filters) (settings string, args []any, copySQL string) {
	w := buildWhere(settingParam, workspace, f, nil)
	return fmt.Sprintf(exportNDJSONSettingsFormat, settingAssignments(w)), w.args,
		fmt.Sprintf(exportNDJSONCopyFormat, fmt.Sprintf(exportNDJSONSelectFormat, w.String()))
}

// settingAssignments renders the set_config calls storing w's arguments.
func settingAssignments(w *where) string {
	var b strings.Builder
	for i, typ := range w.types {
		b.WriteString(settingAssignSeparator)
		fmt.Fprintf(&b, settingAssignFormat, i+1, i+1, typ)
	}
	return b.String()
}

// CSVHeader is the export's header row, the contract's column order.
var CSVHeader = []string{
	"id", "occurred_at", "recorded_at", "workspace_id", "action", "actor_type", "actor_id",
	"actor_email", "actor_name", "resource_type", "resource_ids", "source", "ip",
	"user_agent", "request_id", "details",
}

// exportSQL returns the statement storing the arguments as settings (with
// its bind arguments) and the COPY statement reading them.
func exportSQL(workspace string, f Filters, guard bool) (settings string, args []any, copySQL string) {
	settings, args, sel := exportSelect(workspace, f, guard)
	return settings, args, fmt.Sprintf(exportCopyFormat, sel)
}

// exportSelect is exportSQL with the bare SELECT inside the COPY.
func exportSelect(workspace string, f Filters, guard bool) (settings string, args []any, selectSQL string) {
	w := buildWhere(settingParam, workspace, f, nil)
	cols := exportColumnsPlain
	if guard {
		cols = exportColumnsGuarded
	}
	return fmt.Sprintf(exportSettingsFormat, settingAssignments(w)), w.args, fmt.Sprintf(exportSelectFormat, cols, w.String())
}
