package auth

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// listenSQL subscribes a session to revocations (the channel is a constant).
const listenSQL = `LISTEN ` + RevocationChannel

// Reconnect backoff of Listen.
const (
	listenBackoffMin = 100 * time.Millisecond
	listenBackoffMax = 5 * time.Second
)

// Listen keeps the key cache in step with revocations until ctx ends: on a
// connection of its own (not one of the pool's) it listens on
// RevocationChannel and forgets each revoked key at once, so a revocation
// takes effect on this server within milliseconds rather than the cache TTL.
// While it is not connected (database down, between retries) it cannot
// hear revocations, so every (re)connection clears the whole cache first;
// past that, Options.CacheTTL bounds the staleness as before. It returns
// when ctx is done.
func (a *Authenticator) Listen(ctx context.Context) {
	backoff := listenBackoffMin
	for ctx.Err() == nil {
		listened, err := a.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if listened {
			backoff = listenBackoffMin
		}
		a.logger.Warn("auth: listening for key revocations failed; retrying", "error", err, "retry_in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, listenBackoffMax)
	}
}

// listenOnce connects, subscribes and forgets revoked keys until the
// connection fails or ctx ends; listened tells whether it got as far as
// listening.
func (a *Authenticator) listenOnce(ctx context.Context) (listened bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, a.pool.Config().ConnConfig.Copy())
	if err != nil {
		return false, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, listenSQL); err != nil {
		return false, err
	}
	// Anything revoked while we were not listening is unknown: start over.
	a.forgetAll()
	a.logger.Debug("auth: listening for key revocations")
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return true, ctx.Err()
			}
			return true, err
		}
		a.forget(n.Payload)
	}
}

// forget drops the key id from the cache.
func (a *Authenticator) forget(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for h, e := range a.cache {
		if e.key.ID == id {
			delete(a.cache, h)
		}
	}
}

// forgetAll empties the cache.
func (a *Authenticator) forgetAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.cache)
}
