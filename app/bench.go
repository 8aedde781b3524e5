package app

import (
	"context"

	"github.com/auditlog/auditlog/app/bench"
)

// runBench runs `auditlog bench`: against database.url, or the embedded
// cluster when it is empty. The bench makes its own scratch database there.
func runBench(ctx context.Context, e *env, args []string) error {
	// Arguments first: --help or a typo must not start a database.
	if err := bench.CheckArgs(args, e.stderr); err != nil {
		return argumentError(err) // every error of CheckArgs is about the arguments
	}
	db, err := openDatabase(ctx, e.cfg, e.logger)
	if err != nil {
		return err
	}
	defer db.Close(context.Background())
	return bench.Run(ctx, args, bench.Options{DatabaseURL: db.URL, Logger: e.logger}, e.stdout, e.stderr)
}
