// Package e2e holds the end-to-end fault and load tests of auditlog: the real
// binary, built once per test process, run as a subprocess against real
// PostgreSQL, with faults injected from outside (SIGKILL, a PostgreSQL
// restart, a held snapshot, a second instance, a departing export client,
// sustained load). Every test ends by counting what reached audit_events:
// nothing lost, nothing stored twice, seq unique.
//
// The package has no code of its own; everything is in _test.go files.
//
//	go test ./e2e/                        # the normal suite (~2 minutes)
//	go test -tags soak -run 'Soak|Backlog' ./e2e/   # 1M-row backlog, 3-minute load
//
// Databases come from internal/testdb (AUDITLOG_TEST_DATABASE_URL, else the
// local server on 127.0.0.1:5432); the PostgreSQL restart test runs a
// private cluster of its own through app/embeddedpg.
package e2e
