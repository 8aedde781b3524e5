// Package events serves the read side of the audit log: GET /v1/events, a
// filtered, keyset-paginated query, newest first; and GET /v1/events/export,
// the same filters streamed as CSV straight from COPY ... TO STDOUT, oldest
// first. Every read is scoped to the workspace of the caller's API key.
//
// # Filters
//
// actor_email, actor_id, action (exact, or a prefix ending in '*'),
// resource_type and source may each be given several times (any value
// matches); from (inclusive) and to (exclusive) bound occurred_at. Values are
// validated with ingest's alphabets, so a value that could never be stored is
// a 400 naming the parameter, as is any unknown parameter.
//
// # SQL
//
// Statements are assembled only from the clause constants in sql.go, chosen
// by which filters are present; values are always arguments. The page query
// binds them as parameters. COPY accepts no parameters, so the export first
// stores them as transaction-local settings with set_config($n) (bound) and
// the COPY statement reads them back with current_setting: the SQL text
// holds no user input and no hand-written quoting.
//
// # Cursors
//
// next_cursor carries the last row's (occurred_at, id) and an HMAC-SHA256
// over it, the workspace and the normalised filters, keyed by 32 random bytes
// kept in auditlog_settings (created by the first instance that needs it).
// A cursor used under another workspace, with other filters or altered is
// refused with 400 field "cursor". An empty cursor (cursor=) is the first
// page, as an absent one is. The page size may change between pages.
//
// # Event shape
//
// Events have exactly the contract's keys plus seq; absent optional values
// (actor id/email/name, resource type/ids, ip, user_agent, request_id,
// details) are present as null. details and resource.ids are the stored RFC
// 8785 text, emitted byte for byte.
//
// # Export
//
// Columns are the contract's, in its order, with a header row. With the
// formula guard on, every text cell starting with = + - @, tab, carriage
// return or line feed (OWASP added line feed in 2025) is prefixed with '
// by auditlog_csv_guard (migration 00002). Errors before the first byte are
// JSON errors; after it, the connection is cut so the client sees a
// truncated transfer. Each export, complete or interrupted, is recorded as
// an audit_log.export event in the workspace with the filters, the row count
// and complete true/false.
package events
