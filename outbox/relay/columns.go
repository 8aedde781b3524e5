package relay

import (
	"net/netip"

	"github.com/jackc/pgx/v5/pgtype"
)

// The relay reads and writes every column of every event it moves, so how
// pgx sees a value matters per row. Scanning into a *string allocates the
// string, and a nullable one (**string) a pointer besides; a string,
// int64, time.Time or []byte put into the copy's []any is allocated there,
// and pgx dereferences a *string or *int64 by reflection, allocating again.
// The column types here avoid that: the claim scans each row's text into
// one string (rowScanner), and the copy hands pgx pointers to values that
// implement pgx's encoder interfaces, which take a direct binary plan and
// cost nothing to put into an interface.

// rowScanner reads claimed rows one at a time into row: the fixed-width
// columns directly, the text columns through spans into buf, so that a
// row's text becomes one string rather than one per column. Its scan
// targets point into it, so they are built once.
type rowScanner struct {
	row   claimedRow
	buf   []byte
	spans [nTextColumns]textSpan
	dest  []any
}

// nTextColumns is the number of text columns in claimedColumns.
const nTextColumns = 14

// textSpan is the scan target of a text column: the value is appended to
// buf, and becomes dst once the row is read.
type textSpan struct {
	buf        *[]byte
	dst        *pgtype.Text
	start, end int
	valid      bool
}

// ScanBytes implements pgtype.BytesScanner, which pgx's text codec uses
// for both formats; v is nil for NULL and valid only during the call.
func (s *textSpan) ScanBytes(v []byte) error {
	s.valid = v != nil
	s.start = len(*s.buf)
	*s.buf = append(*s.buf, v...)
	s.end = len(*s.buf)
	return nil
}

func newRowScanner() *rowScanner {
	sc := &rowScanner{}
	c := &sc.row
	n := 0
	text := func(dst *pgtype.Text) *textSpan {
		s := &sc.spans[n]
		*s = textSpan{buf: &sc.buf, dst: dst}
		n++
		return s
	}
	// In claimedColumns order.
	sc.dest = []any{&c.pos, &c.id, text(&c.workspaceID), &c.occurredAt, &c.recordedAt,
		text(&c.action), text(&c.actorType), text(&c.actorID), text(&c.actorEmail),
		text(&c.actorName), text(&c.resourceType), text(&c.resourceIDs), text(&c.flat),
		text(&c.source), &c.ip, text(&c.userAgent), text(&c.requestID), text(&c.details),
		text(&c.host)}
	if n != nTextColumns {
		panic("relay: nTextColumns does not match the scan targets")
	}
	return sc
}

// finish completes row once rows.Scan(dest...) has read it: its text
// columns become substrings of one string.
func (sc *rowScanner) finish() {
	s := string(sc.buf)
	for i := range sc.spans {
		sp := &sc.spans[i]
		*sp.dst = pgtype.Text{String: s[sp.start:sp.end], Valid: sp.valid}
	}
	sc.buf = sc.buf[:0]
}

// rawCol is a scan target keeping a text or bytea column's bytes, reused
// from row to row; NULL reads as empty.
type rawCol []byte

// ScanBytes implements pgtype.BytesScanner.
func (b *rawCol) ScanBytes(v []byte) error {
	*b = append((*b)[:0], v...)
	return nil
}

// inetCol is an inet column value; the zero (invalid) prefix is NULL.
type inetCol struct{ p netip.Prefix }

// ScanNetipPrefix implements pgtype.NetipPrefixScanner.
func (c *inetCol) ScanNetipPrefix(v netip.Prefix) error {
	c.p = v
	return nil
}

// NetipPrefixValue implements pgtype.NetipPrefixValuer.
func (c *inetCol) NetipPrefixValue() (netip.Prefix, error) { return c.p, nil }

// byteaCol is a bytea column value; nil is NULL.
type byteaCol []byte

// BytesValue implements pgtype.BytesValuer.
func (b *byteaCol) BytesValue() ([]byte, error) { return *b, nil }

// The arrays below are array parameters of the move's statements. pgx
// encodes a []int64, []string or [][]byte by putting each element into an
// interface, which allocates per element (for an int64, above 255); these
// hand it a pointer to each element instead.

// int8Array is a bigint[] parameter.
type int8Array []int64

// Dimensions implements pgtype.ArrayGetter.
func (a int8Array) Dimensions() []pgtype.ArrayDimension { return dimensions(a == nil, len(a)) }

// Index implements pgtype.ArrayGetter.
func (a int8Array) Index(i int) any { return (*int8Elem)(&a[i]) }

// IndexType implements pgtype.ArrayGetter.
func (a int8Array) IndexType() any { return (*int8Elem)(nil) }

// int8Elem is an element of an int8Array.
type int8Elem int64

// Int64Value implements pgtype.Int64Valuer.
func (e *int8Elem) Int64Value() (pgtype.Int8, error) {
	return pgtype.Int8{Int64: int64(*e), Valid: true}, nil
}

// textArray is a text[] parameter.
type textArray []string

// Dimensions implements pgtype.ArrayGetter.
func (a textArray) Dimensions() []pgtype.ArrayDimension { return dimensions(a == nil, len(a)) }

// Index implements pgtype.ArrayGetter.
func (a textArray) Index(i int) any { return (*textElem)(&a[i]) }

// IndexType implements pgtype.ArrayGetter.
func (a textArray) IndexType() any { return (*textElem)(nil) }

// textElem is an element of a textArray.
type textElem string

// TextValue implements pgtype.TextValuer.
func (e *textElem) TextValue() (pgtype.Text, error) {
	return pgtype.Text{String: string(*e), Valid: true}, nil
}

// byteaArray is a bytea[] parameter; its elements are byteaCols.
type byteaArray [][]byte

// Dimensions implements pgtype.ArrayGetter.
func (a byteaArray) Dimensions() []pgtype.ArrayDimension { return dimensions(a == nil, len(a)) }

// Index implements pgtype.ArrayGetter.
func (a byteaArray) Index(i int) any { return (*byteaCol)(&a[i]) }

// IndexType implements pgtype.ArrayGetter.
func (a byteaArray) IndexType() any { return (*byteaCol)(nil) }

// dimensions are those of a one-dimensional array of n elements, nil (SQL
// NULL) for a nil slice, as pgx's own slices.
func dimensions(isNil bool, n int) []pgtype.ArrayDimension {
	if isNil {
		return nil
	}
	return []pgtype.ArrayDimension{{Length: int32(n), LowerBound: 1}}
}
