// Package httperr writes the API's one error shape:
// {"error": {"code": "...", "message": "...", "field": "..."}}, with
// "field": null when the error names no input. Every error body of the
// server goes through Abort, so all of them have this shape.
package httperr

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/gin-gonic/gin"
)

// Body is the JSON error envelope.
type Body struct {
	Error Detail `json:"error"`
}

// Detail describes one error. Field names the offending input, when there
// is one; "" is written as null (see MarshalJSON).
type Detail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field"`
}

// MarshalJSON writes d with the key "field" always present, null when d
// names no input: clients read one shape whatever the status.
func (d Detail) MarshalJSON() ([]byte, error) {
	var field *string
	if d.Field != "" {
		field = &d.Field
	}
	return json.Marshal(struct {
		Code    string  `json:"code"`
		Message string  `json:"message"`
		Field   *string `json:"field"`
	}{d.Code, d.Message, field})
}

// Codes used across the API.
const (
	CodeInvalid          = "invalid_request"
	CodeUnauthenticated  = "unauthenticated"
	CodeForbidden        = "forbidden"
	CodeNotFound         = "not_found"
	CodeTooLarge         = "too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
)

// Abort writes the error and stops the handler chain.
func Abort(c *gin.Context, status int, code, message, field string) {
	c.AbortWithStatusJSON(status, Body{Error: Detail{Code: code, Message: message, Field: field}})
}

// BadParam answers 400 invalid_request for the query parameter param, its
// message prefixed with the parameter's name ("limit: must be ..."); param
// "" blames no parameter.
func BadParam(c *gin.Context, param, msg string) {
	if param != "" {
		msg = param + ": " + msg
	}
	Abort(c, http.StatusBadRequest, CodeInvalid, msg, param)
}

// Quote quotes a client-supplied value for an error message, cut at 64
// bytes so a huge value does not bloat the response.
func Quote(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	return fmt.Sprintf("%q", s)
}
