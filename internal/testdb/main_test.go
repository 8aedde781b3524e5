package testdb

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks the harness leaves no goroutines behind, so packages that
// verify leaks in their own TestMain can use it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
