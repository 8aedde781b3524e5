package app

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// healthcheckTimeoutDefault bounds `auditlog healthcheck`'s request.
const healthcheckTimeoutDefault = 3 * time.Second

// runHealthcheck asks the server on this machine (http.addr, with an empty
// or wildcard host taken as loopback) for /healthz, or --path, and fails
// unless it answers 200. It is for container HEALTHCHECKs in images without
// curl or a shell (the Dockerfile's).
func runHealthcheck(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet("healthcheck", e.stderr)
	path := fs.String("path", "/healthz", "path to ask: /healthz (alive) or /readyz (database reachable and migrated)")
	timeout := fs.Duration("timeout", healthcheckTimeoutDefault, "how long to wait for the answer")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 || *timeout <= 0 || len(*path) == 0 || (*path)[0] != '/' {
		return usagef("healthcheck takes --path /PATH and --timeout DURATION only")
	}
	addr, err := loopbackAddr(e.cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("healthcheck: http.addr: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	url := "http://" + addr + *path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: building the request for %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: asking %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %s: %s", url, resp.Status, body)
	}
	fmt.Fprintf(e.stdout, "%s: %s\n", url, body)
	return nil
}

// loopbackAddr turns a listen address into one to dial on this machine:
// an empty or unspecified host becomes the loopback address.
func loopbackAddr(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", err
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port), nil
}
