// Command auditlog is the audit-log service: HTTP ingest, query and export
// API, the outbox relay and partition maintenance, in one binary. See the
// README for the commands and configuration.
package main

import (
	"os"

	"github.com/auditlog/auditlog/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr))
}
