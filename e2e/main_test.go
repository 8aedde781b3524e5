package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

// binPath is the auditlog binary built by TestMain.
var binPath string

// TestMain builds the binary once, runs the tests, and fails the run if any
// goroutine of the in-process parts (relay, pools, HTTP server, clients) is
// left behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(withBinary{m})
}

// withBinary builds the binary before the tests and removes it after.
type withBinary struct{ m *testing.M }

func (w withBinary) Run() int {
	dir, err := os.MkdirTemp("", "auditlog-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: creating a directory for the binary: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "auditlog")
	cmd := exec.Command("go", "build", "-o", binPath, "github.com/auditlog/auditlog")
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building the auditlog binary: %v\n", err)
		return 1
	}
	return w.m.Run()
}
