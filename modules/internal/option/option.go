// Package option applies the defaults and bounds of the helpdesk modules'
// options: a zero value takes the default, and the result must lie within
// the option's range.
package option

import "fmt"

// Number is what a bounded option is: a count, a byte size or a duration.
type Number interface {
	~int | ~int64
}

// Bounded sets *v to def when it is zero, then checks lo <= *v <= hi. The
// error reads "<name> must be <span>, got <value>", e.g.
// "tickets: MaxImport must be 1-100000, got 0"; a duration is shown as
// time.Duration.String does.
func Bounded[T Number](v *T, def, lo, hi T, name, span string) error {
	if *v == 0 {
		*v = def
	}
	if *v < lo || *v > hi {
		return fmt.Errorf("%s must be %s, got %v", name, span, *v)
	}
	return nil
}
