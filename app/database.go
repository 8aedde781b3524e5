package app

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/auditlog/auditlog/app/config"
	"github.com/auditlog/auditlog/app/embeddedpg"
	"github.com/auditlog/auditlog/migrations"
)

// database is an open pool plus whatever must be stopped with it (the
// embedded cluster, when database.url is empty).
type database struct {
	Pool     *pgxpool.Pool
	URL      string
	embedded *embeddedpg.Cluster
	// ownsEmbedded: Close stops the embedded cluster. True when this
	// process started it, and for serve (which also stops a cluster left
	// running by a crashed run); a short command that found it running
	// leaves it alone, since a serve may be using it.
	ownsEmbedded bool
	logger       *slog.Logger
}

// openDatabase connects to database.url, or starts the embedded cluster
// when it is empty.
func openDatabase(ctx context.Context, cfg config.Config, logger *slog.Logger) (*database, error) {
	db := &database{URL: cfg.Database.URL, logger: logger}
	if db.URL == "" {
		logger.Info("database: starting embedded PostgreSQL", "data_dir", cfg.Database.DataDir, "port", cfg.Database.EmbeddedPort)
		c, err := embeddedpg.Start(ctx, embeddedpg.Config{
			DataDir: cfg.Database.DataDir,
			Port:    cfg.Database.EmbeddedPort,
			Logger:  logger,
		})
		if err != nil {
			return nil, fmt.Errorf("starting embedded PostgreSQL (set database.url to use an existing server): %w", err)
		}
		db.embedded = c
		db.ownsEmbedded = !c.Adopted()
		db.URL = c.URL()
	}
	pcfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		db.Close(ctx)
		return nil, fmt.Errorf("parsing database.url: %w", err)
	}
	pcfg.MaxConns = int32(cfg.Database.MaxConns)
	// A statement or transaction stuck for minutes holds back the xmin
	// horizon and bloats the outbox; exports are exempt (they set their own).
	if pcfg.ConnConfig.RuntimeParams == nil {
		pcfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	if _, ok := pcfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"]; !ok {
		pcfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = "60000"
	}
	pcfg.ConnConfig.RuntimeParams["application_name"] = "auditlog"
	// Every statement of the service is OLTP-sized or a streamed COPY; JIT
	// only adds compile time (measured: ~250 ms per relay move, seconds per
	// export; PERFORMANCE.md).
	if _, ok := pcfg.ConnConfig.RuntimeParams["jit"]; !ok {
		pcfg.ConnConfig.RuntimeParams["jit"] = "off"
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		db.Close(ctx)
		return nil, fmt.Errorf("connecting to the database: %w", err)
	}
	db.Pool = pool
	return db, nil
}

// Migrate applies pending migrations through a database/sql handle on the
// same pool.
func (db *database) Migrate(ctx context.Context) (int, error) {
	sqlDB := stdlib.OpenDBFromPool(db.Pool)
	defer sqlDB.Close()
	return migrations.Up(ctx, sqlDB)
}

// Close closes the pool and stops the embedded cluster, if any.
func (db *database) Close(ctx context.Context) {
	if db.Pool != nil {
		db.Pool.Close()
	}
	if db.embedded != nil && db.ownsEmbedded {
		if err := db.embedded.Stop(ctx); err != nil {
			db.logger.Error("database: stopping embedded PostgreSQL", "error", err)
		} else {
			db.logger.Info("database: embedded PostgreSQL stopped")
		}
	}
}
