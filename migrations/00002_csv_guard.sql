-- +goose Up

-- CSV formula-injection guard for exports: a cell that a spreadsheet would
-- run as a formula (first character = + - @, tab, carriage return or line
-- feed; OWASP added line feed in 2025) gets a leading apostrophe, which
-- spreadsheets treat as "this is text" and do not display. A tab prefix is
-- not used: it was itself found bypassable (CVE-2021-41270). NULL stays NULL
-- (an empty CSV field). Not STRICT, so the planner can inline the body.
-- +goose StatementBegin
CREATE FUNCTION auditlog_csv_guard(cell text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN left(cell, 1) IN ('=', '+', '-', '@', E'\t', E'\r', E'\n') THEN '''' || cell
    ELSE cell
END;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION auditlog_csv_guard(text);
