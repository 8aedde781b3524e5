package integrity

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/gowebpki/jcs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditlog/auditlog/outbox"
)

// Kinds of checkpoint.
const (
	KindScheduled = "scheduled"
	KindManual    = "manual"
	KindPrune     = "prune"
)

// Bridge says the chain ran from FromHash to ToHash through the events
// FirstSeq..LastSeq (Events of them), which retention dropped with their
// partition. Hashes are lowercase hex.
type Bridge struct {
	FromHash string `json:"from_hash"`
	ToHash   string `json:"to_hash"`
	FirstSeq int64  `json:"first_seq"`
	LastSeq  int64  `json:"last_seq"`
	Events   int64  `json:"events"`
}

// Checkpoint is a signed statement that workspace's chain had its head at
// Seq with Hash at CreatedAt. It is also the JSON GET /v1/checkpoints
// returns and `auditlog verify --checkpoints` reads.
type Checkpoint struct {
	// ID numbers checkpoints in creation order; not signed.
	ID int64 `json:"id"`
	Statement
	// Signature is standard base64 of the Ed25519 signature over
	// SignedBytes; null when no signing key was configured.
	Signature *string `json:"signature"`
}

// Statement is what a checkpoint's signature covers: every member of its
// JSON object but id and signature.
type Statement struct {
	WorkspaceID string `json:"workspace_id"`
	// Seq is the seq of the head event, 0 for an empty chain.
	Seq int64 `json:"seq"`
	// Hash is the head event's hash in lowercase hex (Genesis when empty).
	Hash string `json:"hash"`
	// CreatedAt is in the contract's timestamp form.
	CreatedAt string `json:"created_at"`
	// Kind is scheduled, manual or prune.
	Kind string `json:"kind"`
	// Bridges are the stretches of chain a prune removed (kind prune only;
	// empty otherwise, never null).
	Bridges []Bridge `json:"bridges"`
	// KeyID names the signing key ([KeyID]); null when unsigned.
	KeyID *string `json:"key_id"`
}

// SignedBytes returns the bytes the signature covers: the RFC 8785 form of
// the checkpoint's JSON object without "id" and "signature".
func (c Checkpoint) SignedBytes() ([]byte, error) {
	st := c.Statement
	if st.Bridges == nil {
		st.Bridges = []Bridge{}
	}
	raw, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("encoding checkpoint: %w", err)
	}
	return jcs.Transform(raw)
}

// ErrUnsigned is returned by VerifySignature for a checkpoint made without
// a signing key.
var ErrUnsigned = errors.New("checkpoint is not signed")

// VerifySignature checks c's signature with pub.
func (c Checkpoint) VerifySignature(pub ed25519.PublicKey) error {
	if c.Signature == nil || c.KeyID == nil {
		return ErrUnsigned
	}
	if *c.KeyID != KeyID(pub) {
		return fmt.Errorf("signed by key %s, not by the given key %s", *c.KeyID, KeyID(pub))
	}
	sig, err := base64.StdEncoding.DecodeString(*c.Signature)
	if err != nil {
		return fmt.Errorf("signature is not base64: %w", err)
	}
	msg, err := c.SignedBytes()
	if err != nil {
		return err
	}
	if !ed25519.Verify(pub, msg, sig) {
		return errors.New("signature does not match the checkpoint's content")
	}
	return nil
}

// sign sets KeyID and Signature with s; a nil s leaves c unsigned.
func (c *Checkpoint) sign(s *Signer) error {
	if s == nil {
		c.KeyID, c.Signature = nil, nil
		return nil
	}
	id := s.KeyID()
	c.KeyID = &id
	msg, err := c.SignedBytes()
	if err != nil {
		return err
	}
	sig := base64.StdEncoding.EncodeToString(s.Sign(msg))
	c.Signature = &sig
	return nil
}

// Checkpointer makes checkpoints.
type Checkpointer struct {
	pool   *pgxpool.Pool
	signer *Signer
	log    *slog.Logger
	now    func() time.Time

	made *prometheus.CounterVec
	last prometheus.Gauge
}

// Register adds the metrics auditlog_integrity_checkpoints_total{kind} and
// auditlog_integrity_last_checkpoint_timestamp_seconds (Unix time of the
// last checkpoint this process made, 0 before the first: alert when it
// falls behind the schedule) to reg.
func (c *Checkpointer) Register(reg prometheus.Registerer) error {
	c.made = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "auditlog_integrity_checkpoints_total",
		Help: "Checkpoints made by this process, by kind (scheduled, manual, prune).",
	}, []string{"kind"})
	c.last = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "auditlog_integrity_last_checkpoint_timestamp_seconds",
		Help: "Unix time of the last checkpoint this process made; 0 before the first.",
	})
	for _, col := range []prometheus.Collector{c.made, c.last} {
		if err := reg.Register(col); err != nil {
			return fmt.Errorf("integrity: registering metrics: %w", err)
		}
	}
	return nil
}

// count records one checkpoint made at t in the metrics, when registered.
func (c *Checkpointer) count(kind string, t time.Time) {
	if c.made == nil {
		return
	}
	c.made.WithLabelValues(kind).Inc()
	c.last.Set(float64(t.UnixMilli()) / 1000)
}

// NewCheckpointer returns a Checkpointer over pool signing with signer; a
// nil signer makes unsigned checkpoints (verification with a public key
// does not trust them). logger may be nil (slog.Default()).
func NewCheckpointer(pool *pgxpool.Pool, signer *Signer, logger *slog.Logger) (*Checkpointer, error) {
	if pool == nil {
		return nil, errors.New("integrity: NewCheckpointer: pool is nil")
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &Checkpointer{pool: pool, signer: signer, log: logger, now: time.Now}, nil
}

// Signer returns the checkpointer's signer, nil when unsigned.
func (c *Checkpointer) Signer() *Signer { return c.signer }

// headsToCheckpointSQL lists chain heads ($1 = ” for every workspace) that
// moved past the workspace's last checkpoint, or all of them when $2.
const headsToCheckpointSQL = `
SELECT h.workspace_id, h.seq, h.hash
FROM audit_chain_heads h
WHERE ($1 = '' OR h.workspace_id = $1)
  AND ($2 OR h.seq > coalesce(
        (SELECT max(c.seq) FROM audit_checkpoints c WHERE c.workspace_id = h.workspace_id), 0))
ORDER BY h.workspace_id`

// headSQL reads workspace $1's chain head.
const headSQL = `SELECT seq, hash FROM audit_chain_heads WHERE workspace_id = $1`

const insertCheckpointSQL = `
INSERT INTO audit_checkpoints (workspace_id, seq, hash, created_at, kind, bridges, key_id, signature)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id`

// Checkpoint signs the current chain head of workspace (every workspace
// when ""), of kind KindScheduled or KindManual. Without force, only heads
// that moved since the workspace's last checkpoint get one. It returns the
// checkpoints made.
func (c *Checkpointer) Checkpoint(ctx context.Context, workspace, kind string, force bool) ([]Checkpoint, error) {
	if kind != KindScheduled && kind != KindManual {
		return nil, fmt.Errorf("making checkpoints: kind %q: want %q or %q", kind, KindScheduled, KindManual)
	}
	rows, err := c.pool.Query(ctx, headsToCheckpointSQL, workspace, force)
	if err != nil {
		return nil, fmt.Errorf("reading chain heads: %w", err)
	}
	type head struct {
		ws   string
		seq  int64
		hash []byte
	}
	heads, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (head, error) {
		var h head
		return h, r.Scan(&h.ws, &h.seq, &h.hash)
	})
	if err != nil {
		return nil, fmt.Errorf("reading chain heads: %w", err)
	}
	if workspace != "" && force && len(heads) == 0 {
		heads = append(heads, head{ws: workspace, hash: Genesis}) // an empty chain
	}
	made := make([]Checkpoint, 0, len(heads))
	for _, h := range heads {
		cp, err := c.insert(ctx, c.pool, h.ws, h.seq, h.hash, kind, nil)
		if err != nil {
			return made, err
		}
		made = append(made, cp)
	}
	if len(made) > 0 {
		c.log.InfoContext(ctx, "integrity: checkpoints made", "kind", kind, "checkpoints", len(made))
	}
	return made, nil
}

type execQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// insert builds, signs and stores one checkpoint.
func (c *Checkpointer) insert(ctx context.Context, q execQuerier, ws string, seq int64, hash []byte, kind string, bridges []Bridge) (Checkpoint, error) {
	if bridges == nil {
		bridges = []Bridge{}
	}
	created := c.now().UTC().Truncate(time.Millisecond)
	cp := Checkpoint{Statement: Statement{
		WorkspaceID: ws, Seq: seq, Hash: hex.EncodeToString(hash),
		CreatedAt: outbox.FormatTime(created), Kind: kind, Bridges: bridges,
	}}
	if err := cp.sign(c.signer); err != nil {
		return Checkpoint{}, fmt.Errorf("signing checkpoint of workspace %s: %w", ws, err)
	}
	bridgesJSON, err := json.Marshal(bridges)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("encoding bridges: %w", err)
	}
	var sig []byte
	if cp.Signature != nil {
		sig, _ = base64.StdEncoding.DecodeString(*cp.Signature)
	}
	if err := q.QueryRow(ctx, insertCheckpointSQL, ws, seq, hash, created, kind,
		string(bridgesJSON), cp.KeyID, sig).Scan(&cp.ID); err != nil {
		return Checkpoint{}, fmt.Errorf("storing checkpoint of workspace %s: %w", ws, err)
	}
	c.count(kind, created) // a prune's may still roll back with its drop; rare enough to ignore
	return cp, nil
}

// checkpointColumns are what scanCheckpoint reads, in its order.
const checkpointColumns = `id, workspace_id, seq, hash, created_at, kind, bridges, key_id, signature`

// listCheckpointsSQL lists workspace $1's checkpoints, oldest first.
const listCheckpointsSQL = `
SELECT ` + checkpointColumns + `
FROM audit_checkpoints
WHERE workspace_id = $1
ORDER BY id`

// ListPageSQL is the statement ListPage runs. It reads up to $3
// checkpoints of workspace $1 with id greater than $2 (0 for the first
// page), oldest first: the rows after ($1, $2) in
// audit_checkpoints_workspace_idx (workspace_id, id), migration 00008, up
// to the end of workspace $1. Together the two conditions say exactly
// "workspace_id = $1 AND id > $2", and the plan is a range scan of that
// index stopped after $3 rows, custom or generic, however deep the page.
//
// It is written this way, not as "workspace_id = $1 AND id > $2 ORDER BY
// id", on purpose. With the equality, ordering by workspace_id is
// redundant to the planner and the primary key also yields id order, so it
// may walk the primary key from $2 and filter on the workspace. For a
// workspace whose checkpoints are old (it went quiet while others went on)
// that reads every later checkpoint of every workspace: 180,000 rows
// filtered out for the last 100-row page of one workspace among 189,000
// checkpoints. Ordering by (workspace_id, id) with a range on workspace_id
// leaves this index the only one that yields the order. Exported for the
// plan test of GET /v1/checkpoints (api/checkpoints).
const ListPageSQL = `
SELECT ` + checkpointColumns + `
FROM audit_checkpoints
WHERE (workspace_id, id) > ($1, $2) AND workspace_id <= $1
ORDER BY workspace_id, id
LIMIT $3`

// Querier is what List and ListPage read through: a pool, a connection or
// a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// List returns workspace's checkpoints, oldest first.
func List(ctx context.Context, q Querier, workspace string) ([]Checkpoint, error) {
	rows, err := q.Query(ctx, listCheckpointsSQL, workspace)
	if err != nil {
		return nil, fmt.Errorf("listing checkpoints: %w", err)
	}
	cps, err := pgx.CollectRows(rows, scanCheckpoint)
	if err != nil {
		return nil, fmt.Errorf("listing checkpoints: %w", err)
	}
	return cps, nil
}

// ListPage returns up to limit of workspace's checkpoints with an id
// greater than afterID (0: from the first), oldest first, and whether more
// follow: GET /v1/checkpoints's pages.
func ListPage(ctx context.Context, q Querier, workspace string, afterID int64, limit int) ([]Checkpoint, bool, error) {
	// One extra row tells whether a next page exists.
	rows, err := q.Query(ctx, ListPageSQL, workspace, afterID, limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("listing checkpoints: %w", err)
	}
	cps, err := pgx.CollectRows(rows, scanCheckpoint)
	if err != nil {
		return nil, false, fmt.Errorf("listing checkpoints: %w", err)
	}
	if len(cps) > limit {
		return cps[:limit], true, nil
	}
	return cps, false, nil
}

// scanCheckpoint reads a row of checkpointColumns into the form the
// signatures were made over (see Checkpoint).
func scanCheckpoint(r pgx.CollectableRow) (Checkpoint, error) {
	var (
		cp      Checkpoint
		hash    []byte
		created time.Time
		bridges string
		sig     []byte
	)
	if err := r.Scan(&cp.ID, &cp.WorkspaceID, &cp.Seq, &hash, &created, &cp.Kind, &bridges, &cp.KeyID, &sig); err != nil {
		return cp, err
	}
	cp.Hash = hex.EncodeToString(hash)
	cp.CreatedAt = outbox.FormatTime(created)
	if err := json.Unmarshal([]byte(bridges), &cp.Bridges); err != nil {
		return cp, fmt.Errorf("checkpoint %d: bridges: %w", cp.ID, err)
	}
	if sig != nil {
		s := base64.StdEncoding.EncodeToString(sig)
		cp.Signature = &s
	}
	return cp, nil
}

// bridgesSQL finds, among the chained events with occurred_at in [$1, $2)
// (a partition about to be dropped; $1 is -infinity for one without a
// lower bound, so that even a generic plan prunes to that partition), the
// stretches that are consecutive in their workspace's chain: a stretch
// starts at an event whose prev_hash is not the hash of the partition's
// previous event of that workspace, and ends where the next one starts.
const bridgesSQL = `
WITH linked AS (
    SELECT workspace_id, seq, prev_hash, hash,
           prev_hash IS DISTINCT FROM lag(hash) OVER w AS starts,
           coalesce(lead(prev_hash) OVER w IS DISTINCT FROM hash, true) AS ends
    FROM audit_events
    WHERE occurred_at >= $1 AND occurred_at < $2 AND hash IS NOT NULL
    WINDOW w AS (PARTITION BY workspace_id ORDER BY seq)
), runs AS (
    SELECT *, count(*) FILTER (WHERE starts) OVER (PARTITION BY workspace_id ORDER BY seq) AS run
    FROM linked
)
SELECT workspace_id, min(seq), max(seq), count(*),
       (array_agg(prev_hash) FILTER (WHERE starts))[1],
       (array_agg(hash) FILTER (WHERE ends))[1]
FROM runs
GROUP BY workspace_id, run
ORDER BY workspace_id, min(seq)`

// lastSeqSQL reads the last seq the relay gave out. Moves are serialised on
// audit_seq until they commit, so a snapshot that sees last_seq = S sees
// every event up to S and none after.
const lastSeqSQL = `SELECT last_seq FROM audit_seq`

// lateEventsSQL reports whether chained events with occurred_at in [$1, $2)
// were stored after seq $3.
const lateEventsSQL = `
SELECT EXISTS (
    SELECT 1 FROM audit_events
    WHERE occurred_at >= $1 AND occurred_at < $2 AND hash IS NOT NULL AND seq > $3)`

// BeforeDrop computes, inside tx and before inserts are locked out, the
// bridges over the chained events with occurred_at in [from, to) (from
// zero: no lower bound), and returns underLock, which partition maintenance
// runs once inserts wait: it checks that no chained event landed in the
// range since (recomputing the bridges if one did), then records a prune
// checkpoint for every workspace with chained events in it, carrying the
// bridges over them. Dropping then removes only what the checkpoints account
// for, so what remains still verifies. It is partitions.Config.BeforeDrop:
// the slow part (reading the whole partition) runs while the relay goes on,
// and only the check runs while inserts wait.
func (c *Checkpointer) BeforeDrop(ctx context.Context, tx pgx.Tx, from, to time.Time) (underLock func(context.Context) error, err error) {
	// -infinity, not NULL, for no lower bound: "$1 IS NULL OR occurred_at
	// >= $1" defeats partition pruning in a generic plan.
	fromArg := pgtype.Timestamptz{Time: from, Valid: true}
	if from.IsZero() {
		fromArg = pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
	}
	var seen int64
	if err := tx.QueryRow(ctx, lastSeqSQL).Scan(&seen); err != nil {
		return nil, fmt.Errorf("reading the last seq: %w", err)
	}
	byWorkspace, order, err := c.bridges(ctx, tx, fromArg, to)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		var late bool
		if err := tx.QueryRow(ctx, lateEventsSQL, fromArg, to, seen).Scan(&late); err != nil {
			return fmt.Errorf("looking for events stored before %s since seq %d: %w", to.Format(time.RFC3339), seen, err)
		}
		if late {
			c.log.InfoContext(ctx, "integrity: events landed in a partition being dropped; finding its chain links again")
			if byWorkspace, order, err = c.bridges(ctx, tx, fromArg, to); err != nil {
				return err
			}
		}
		for _, ws := range order {
			var (
				seq  int64
				hash []byte
			)
			if err := tx.QueryRow(ctx, headSQL, ws).Scan(&seq, &hash); err != nil {
				return fmt.Errorf("reading the chain head of workspace %s: %w", ws, err)
			}
			if _, err := c.insert(ctx, tx, ws, seq, hash, KindPrune, byWorkspace[ws]); err != nil {
				return err
			}
			c.log.InfoContext(ctx, "integrity: prune checkpoint made", "workspace", ws, "bridges", len(byWorkspace[ws]))
		}
		return nil
	}, nil
}

// bridges runs bridgesSQL.
func (c *Checkpointer) bridges(ctx context.Context, tx pgx.Tx, fromArg pgtype.Timestamptz, to time.Time) (map[string][]Bridge, []string, error) {
	rows, err := tx.Query(ctx, bridgesSQL, fromArg, to)
	if err != nil {
		return nil, nil, fmt.Errorf("finding the chain links of events before %s: %w", to.Format(time.RFC3339), err)
	}
	defer rows.Close()
	byWorkspace := map[string][]Bridge{}
	var order []string
	for rows.Next() {
		var (
			ws       string
			b        Bridge
			fromHash []byte
			toHash   []byte
		)
		if err := rows.Scan(&ws, &b.FirstSeq, &b.LastSeq, &b.Events, &fromHash, &toHash); err != nil {
			return nil, nil, fmt.Errorf("reading chain links: %w", err)
		}
		b.FromHash, b.ToHash = hex.EncodeToString(fromHash), hex.EncodeToString(toHash)
		if _, seen := byWorkspace[ws]; !seen {
			order = append(order, ws)
		}
		byWorkspace[ws] = append(byWorkspace[ws], b)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading chain links: %w", err)
	}
	return byWorkspace, order, nil
}
