// Package web holds the small helpers the helpdesk modules share: strict
// JSON request decoding, UUID parsing, the API's error shape (api/httperr)
// for the cases every handler meets, and the dependency check of every
// module's constructor.
package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/api/dberr"
	"github.com/auditlog/auditlog/api/httperr"
)

// CodeConflict answers a request that contradicts stored state (a duplicate
// email, removing the last owner).
const CodeConflict = "conflict"

// MaxBodyBytesDefault bounds an ordinary JSON request body (1 MiB).
const MaxBodyBytesDefault = 1 << 20

// Invalid answers 400 naming the field.
func Invalid(c *gin.Context, field, message string) {
	httperr.Abort(c, http.StatusBadRequest, httperr.CodeInvalid, message, field)
}

// NotFound answers 404 saying what was not found.
func NotFound(c *gin.Context, what string) {
	httperr.Abort(c, http.StatusNotFound, httperr.CodeNotFound, what+" not found", "")
}

// Forbidden answers 403.
func Forbidden(c *gin.Context, message string) {
	httperr.Abort(c, http.StatusForbidden, httperr.CodeForbidden, message, "")
}

// Error is a refusal decided inside a transaction (not found, forbidden,
// conflict), returned through pgx.BeginFunc so the transaction rolls back and
// then answered by Abort.
type Error struct {
	Status  int
	Code    string
	Field   string
	Message string
}

func (e *Error) Error() string { return e.Message }

// NotFoundError is a 404 Error saying what was not found.
func NotFoundError(what string) *Error {
	return &Error{Status: http.StatusNotFound, Code: httperr.CodeNotFound, Message: what + " not found"}
}

// ForbiddenError is a 403 Error.
func ForbiddenError(message string) *Error {
	return &Error{Status: http.StatusForbidden, Code: httperr.CodeForbidden, Message: message}
}

// ConflictError is a 409 Error naming the field, when there is one.
func ConflictError(field, message string) *Error {
	return &Error{Status: http.StatusConflict, Code: CodeConflict, Field: field, Message: message}
}

// InvalidError is a 400 Error naming the field.
func InvalidError(field, message string) *Error {
	return &Error{Status: http.StatusBadRequest, Code: httperr.CodeInvalid, Field: field, Message: message}
}

// Abort answers err: an *Error as itself, anything else through Fail.
func Abort(c *gin.Context, logger *slog.Logger, what string, err error) {
	var e *Error
	if errors.As(err, &e) {
		httperr.Abort(c, e.Status, e.Code, e.Message, e.Field)
		return
	}
	Fail(c, logger, what, err)
}

// Fail answers an unexpected error: 503 when the database is unreachable,
// 400 when PostgreSQL refused a value, else 500; the error is logged with
// what was being done and never shown to the client.
func Fail(c *gin.Context, logger *slog.Logger, what string, err error) {
	if dberr.Classify(err) != dberr.BadInput {
		logger.ErrorContext(c.Request.Context(), "helpdesk request failed",
			slog.String("doing", what), slog.String("route", c.FullPath()), slog.Any("error", err))
	}
	dberr.Abort(c, err, what)
}

// ParseID reads the path parameter name as a UUID, answering 400 when it is
// not one.
func ParseID(c *gin.Context, name string) (uuid.UUID, bool) {
	id, verr := UUID(name, c.Param(name), "must be a UUID")
	if verr != nil {
		Invalid(c, verr.Field, verr.Message)
		return uuid.UUID{}, false
	}
	return id, true
}

// UUID parses s as a UUID in its canonical 36-character form
// (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, either case); anything else is a
// 400 Error naming field with message.
func UUID(field, s, message string) (uuid.UUID, *Error) {
	id, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return uuid.UUID{}, InvalidError(field, message)
	}
	return id, nil
}

// CheckDeps is the check every module's constructor makes: pool and logger
// must be set. Errors start with name ("tickets: pool is nil").
func CheckDeps(name string, pool *pgxpool.Pool, logger *slog.Logger) error {
	if pool == nil {
		return errors.New(name + ": pool is nil")
	}
	if logger == nil {
		return errors.New(name + ": logger is nil")
	}
	return nil
}

// UniqueViolation returns the constraint name when err is a unique
// violation (SQLSTATE 23505).
func UniqueViolation(err error) (string, bool) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return pgErr.ConstraintName, true
	}
	return "", false
}

// CheckJSONContentType answers 415 unless the request says it carries JSON.
func CheckJSONContentType(c *gin.Context) bool {
	mt, _, err := mime.ParseMediaType(c.GetHeader("Content-Type"))
	if err != nil || mt != "application/json" {
		httperr.Abort(c, http.StatusUnsupportedMediaType, httperr.CodeUnsupportedMedia,
			"the body must be application/json", "")
		return false
	}
	return true
}

// DecodeJSON reads the body as exactly one JSON object into dst, refusing
// unknown fields. It answers 415 for another content type, 413 beyond limit
// bytes and 400 naming the field for malformed input, and returns false
// after answering.
func DecodeJSON(c *gin.Context, limit int64, dst any) bool {
	if !CheckJSONContentType(c) {
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(c.Writer, c.Request.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		AbortDecode(c, err, "")
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			AbortDecode(c, err, "")
		} else {
			Invalid(c, "", "the body must hold one JSON value")
		}
		return false
	}
	return true
}

// AbortDecode answers a JSON decoding error as DecodeError describes it.
func AbortDecode(c *gin.Context, err error, prefix string) {
	e := DecodeError(err, prefix)
	httperr.Abort(c, e.Status, e.Code, e.Message, e.Field)
}

// DecodeError turns a JSON decoding error into the answer: 413 when the body
// was over its limit, else 400 naming the field, prefixed with prefix (e.g.
// "[3]." for the fourth element of an array body).
func DecodeError(err error, prefix string) *Error {
	var maxErr *http.MaxBytesError
	var synErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	whole := strings.TrimSuffix(prefix, ".")
	switch {
	case errors.As(err, &maxErr):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: httperr.CodeTooLarge,
			Message: fmt.Sprintf("the body is larger than %d bytes", maxErr.Limit)}
	case errors.Is(err, io.EOF):
		return InvalidError(whole, "the body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return InvalidError(whole, "the body is truncated JSON")
	case errors.As(err, &synErr):
		return InvalidError(whole, fmt.Sprintf("malformed JSON at byte %d", synErr.Offset))
	case errors.As(err, &typeErr):
		if typeErr.Field == "" {
			return InvalidError(whole, "must be a JSON "+jsonKind(typeErr.Type.Kind().String()))
		}
		return InvalidError(prefix+typeErr.Field, "must be a JSON "+jsonKind(typeErr.Type.Kind().String()))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return InvalidError(prefix+name, "is not a known field")
	default:
		return InvalidError(whole, "malformed JSON")
	}
}

// jsonKind names a Go kind the way a JSON client thinks of it.
func jsonKind(kind string) string {
	switch kind {
	case "string":
		return "string"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "float32", "float64":
		return "number"
	case "bool":
		return "boolean"
	case "slice", "array":
		return "array"
	default:
		return "object"
	}
}

// Text checks a user-supplied string that PostgreSQL text must hold: no NUL
// character and at most max characters.
func Text(field, s string, max int) *Error {
	if strings.IndexByte(s, 0) >= 0 {
		return InvalidError(field, "must not contain a NUL character")
	}
	if n := utf8.RuneCountInString(s); n > max {
		return InvalidError(field, fmt.Sprintf("must be at most %d characters", max))
	}
	return nil
}

// Email trims and lower-cases an address and checks it the way audit
// events do (contract §1): at most 254 characters with one @ and no spaces.
func Email(field, s string) (string, *Error) {
	e := strings.ToLower(strings.TrimSpace(s))
	if e == "" {
		return "", InvalidError(field, "is required")
	}
	at := strings.IndexByte(e, '@')
	if len(e) > 254 || strings.Count(e, "@") != 1 || at == 0 || at == len(e)-1 ||
		strings.ContainsAny(e, " \t\r\n\x00") || !utf8.ValidString(e) {
		return "", InvalidError(field, "must be an email address with one @, at most 254 characters")
	}
	return e, nil
}
