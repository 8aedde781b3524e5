// Package paging holds the page-size rule the API's paginated routes
// (GET /v1/events, GET /v1/checkpoints) share, so a client pages them alike.
package paging

import (
	"fmt"
	"strconv"
)

// Page sizes: the limit query parameter's default and largest value.
const (
	LimitDefault = 100
	LimitMax     = 1000
)

// ParseLimit reads the limit query parameter s: LimitDefault when it is
// absent (present false), otherwise an integer from 1 to LimitMax.
func ParseLimit(s string, present bool) (int, error) {
	if !present {
		return LimitDefault, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > LimitMax {
		return 0, fmt.Errorf("must be an integer from 1 to %d", LimitMax)
	}
	return n, nil
}
