package outbox

import (
	"errors"
	"fmt"
)

// ValidationError reports an event refused before it reached storage. Field
// names the offending field in the contract's JSON form ("actor.email",
// "resource.ids.ticket"); Index is the event's position in a batch, or -1.
type ValidationError struct {
	Index   int
	Field   string
	Message string
}

func (e *ValidationError) Error() string {
	if e.Index >= 0 {
		return fmt.Sprintf("events[%d].%s: %s", e.Index, e.Field, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Field, e.Message)
}

// FieldPath is the field with the batch index when there is one, e.g.
// "events[3].action".
func (e *ValidationError) FieldPath() string {
	if e.Index >= 0 {
		return fmt.Sprintf("events[%d].%s", e.Index, e.Field)
	}
	return e.Field
}

func invalid(field, format string, args ...any) *ValidationError {
	return &ValidationError{Index: -1, Field: field, Message: fmt.Sprintf(format, args...)}
}

// AsValidationError returns the *ValidationError in err's chain, if any.
func AsValidationError(err error) (*ValidationError, bool) {
	var ve *ValidationError
	ok := errors.As(err, &ve)
	return ve, ok
}
