package outbox

import (
	"context"
	"encoding/binary"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
)

// RecordBatch writes COPY's binary format itself rather than through
// pgx.CopyFrom. pgx looks up an encode plan and boxes a value for every
// column of every row; for the outbox's 17 columns that was about as much
// client CPU per event as normalising it, on a machine where the client
// shares two cores with the server doing the COPY. Every column here is a
// uuid, text, timestamptz or inet, each with a fixed binary form, and the
// table's shape is this package's own (the migrations); a column whose type
// changed would make the server refuse the data, never misread it
// (TestCopyMatchesInsert compares the two write paths row for row).

// copyOutboxSQL copies the columns appendCopyRow writes, in its order.
const copyOutboxSQL = `COPY audit_outbox (
    id, workspace_id, occurred_at, recorded_at, action, actor_type, actor_id,
    actor_email, actor_name, resource_type, resource_ids, resource_ids_flat,
    source, ip, user_agent, request_id, details
) FROM STDIN (FORMAT binary)`

// copyColumns is how many columns copyOutboxSQL names.
const copyColumns = 17

// copySignature opens binary COPY data: the signature, no flags, no
// header extension.
var copySignature = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

// pgEpochMicros is 2000-01-01 UTC, where PostgreSQL's timestamps count
// microseconds from, in Unix microseconds.
const pgEpochMicros = 946_684_800_000_000

// copyBlock is how much encoded data a copyReader gathers before handing
// it on: pgconn sends what each Read returns as one CopyData message.
const copyBlock = 64 << 10

func appendCopyRow(b []byte, w *row) []byte {
	b = binary.BigEndian.AppendUint16(b, copyColumns)
	b = binary.BigEndian.AppendUint32(b, 16)
	b = append(b, w.id[:]...)
	b = appendCopyText(b, w.workspaceID)
	b = appendCopyTime(b, w.occurredAt)
	b = appendCopyTime(b, w.recordedAt)
	b = appendCopyText(b, w.action)
	b = appendCopyText(b, w.actorType)
	b = appendCopyNullText(b, w.actorID)
	b = appendCopyNullText(b, w.actorEmail)
	b = appendCopyNullText(b, w.actorName)
	b = appendCopyNullText(b, w.resourceType)
	b = appendCopyNullText(b, w.resourceIDs)
	b = appendCopyText(b, w.resourceIDsFlat)
	b = appendCopyText(b, w.source)
	b = appendCopyInet(b, w)
	b = appendCopyNullText(b, w.userAgent)
	b = appendCopyNullText(b, w.requestID)
	return appendCopyNullText(b, w.details)
}

// appendCopyNull writes a NULL field: length -1.
func appendCopyNull(b []byte) []byte { return append(b, 0xff, 0xff, 0xff, 0xff) }

// appendCopyText writes a text field: its UTF-8 bytes, as pgx sends text in
// binary.
func appendCopyText(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func appendCopyNullText(b []byte, s *string) []byte {
	if s == nil {
		return appendCopyNull(b)
	}
	return appendCopyText(b, *s)
}

// appendCopyTime writes a timestamptz: microseconds since 2000-01-01 UTC.
func appendCopyTime(b []byte, t time.Time) []byte {
	b = binary.BigEndian.AppendUint32(b, 8)
	return binary.BigEndian.AppendUint64(b, uint64(t.UnixMicro()-pgEpochMicros))
}

// appendCopyInet writes an inet host address as PostgreSQL's network
// receive function reads it: family (2 for IPv4, 3 for IPv6, PostgreSQL's
// own numbering), prefix bits, is_cidr 0, address length, address.
func appendCopyInet(b []byte, w *row) []byte {
	if w.ip == nil || !w.ip.IsValid() {
		return appendCopyNull(b)
	}
	if a := *w.ip; a.Is4() {
		v := a.As4()
		b = binary.BigEndian.AppendUint32(b, 8)
		b = append(b, 2, 32, 0, 4)
		return append(b, v[:]...)
	}
	v := w.ip.As16()
	b = binary.BigEndian.AppendUint32(b, 20)
	b = append(b, 3, 128, 0, 16)
	return append(b, v[:]...)
}

// copyReader is the data of one binary COPY of rows into audit_outbox: the
// signature, the rows and the trailer, encoded a block at a time as pgconn
// reads them.
type copyReader struct {
	rows  []row
	next  int // the first row not yet encoded
	buf   []byte
	off   int  // buf[off:] is not yet read
	ended bool // the trailer is in buf
}

func newCopyReader(rows []row) *copyReader {
	buf := make([]byte, 0, copyBlock+4096)
	return &copyReader{rows: rows, buf: append(buf, copySignature...)}
}

func (c *copyReader) Read(p []byte) (int, error) {
	// Encode more only when what is left does not fill p: moving the rest
	// to the front on every Read would make small reads quadratic.
	if len(c.buf)-c.off < len(p) && !c.ended {
		c.buf = c.buf[:copy(c.buf, c.buf[c.off:])]
		c.off = 0
		for len(c.buf) < min(len(p), copyBlock) && !c.ended {
			if c.next == len(c.rows) {
				c.buf = append(c.buf, 0xff, 0xff) // field count -1: the end
				c.ended = true
				break
			}
			c.buf = appendCopyRow(c.buf, &c.rows[c.next])
			c.next++
		}
	}
	n := copy(p, c.buf[c.off:])
	c.off += n
	if c.ended && c.off == len(c.buf) {
		return n, io.EOF
	}
	return n, nil
}

// copyRows copies rows into audit_outbox in tx and returns how many the
// server wrote.
func copyRows(ctx context.Context, tx pgx.Tx, rows []row) (int64, error) {
	// pgconn knows nothing of the transaction: refuse one already ended,
	// as pgx's own CopyFrom does, rather than copy on a connection that
	// may be back in its pool. An empty batch goes nowhere; a closed
	// transaction refuses it with ErrTxClosed.
	if err := tx.SendBatch(ctx, &pgx.Batch{}).Close(); err != nil {
		return 0, err
	}
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, newCopyReader(rows), copyOutboxSQL)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}
