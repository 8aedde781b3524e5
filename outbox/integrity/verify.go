package integrity

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// Kinds of break, in the words of README "Integrity".
const (
	// BreakChanged: an event's content no longer matches its hash, or the
	// chain no longer matches a signed checkpoint (rewritten).
	BreakChanged = "changed"
	// BreakMissing: an event's predecessor is not there, and no signed
	// prune checkpoint accounts for it.
	BreakMissing = "missing"
	// BreakInserted: an event that is not part of the chain.
	BreakInserted = "inserted"
	// BreakReordered: events out of chain order.
	BreakReordered = "reordered"
	// BreakCheckpoint: a checkpoint whose signature does not verify.
	BreakCheckpoint = "forged_checkpoint"
)

// Break is the first place verification failed.
type Break struct {
	// Seq is the seq of the event where the chain breaks (for a forged
	// checkpoint, the seq it claims).
	Seq int64 `json:"seq"`
	// Kind is one of the Break* constants.
	Kind string `json:"kind"`
	// Reason says what was found, in a sentence.
	Reason string `json:"reason"`
}

func (b *Break) String() string { return fmt.Sprintf("seq %d: %s: %s", b.Seq, b.Kind, b.Reason) }

// Report is the outcome of a verification.
type Report struct {
	// Events counts the chained events read; Unchained those stored before
	// the chain existed (outside it).
	Events    int64 `json:"events"`
	Unchained int64 `json:"unchained"`
	// FirstSeq and LastSeq bound the chained events read.
	FirstSeq int64 `json:"first_seq"`
	LastSeq  int64 `json:"last_seq"`
	// Checkpoints counts the checkpoints trusted (signature verified, or
	// every checkpoint when no key was given) and Matched those whose head
	// the chain passed through or a bridge accounts for.
	Checkpoints int `json:"checkpoints"`
	Matched     int `json:"matched"`
	// Untrusted counts checkpoints not trusted because unsigned.
	Untrusted int `json:"untrusted"`
	// BridgesCrossed counts stretches removed by retention that the chain
	// crossed on bridges.
	BridgesCrossed int `json:"bridges_crossed"`
	// SignaturesChecked is false when no public key was given.
	SignaturesChecked bool `json:"signatures_checked"`
	// UnanchoredFrom is the first seq after the last trusted checkpoint (0
	// when every event is covered): events from there on are chained but not
	// yet under a signature.
	UnanchoredFrom int64 `json:"unanchored_from"`
	// Break is the first failure; nil when everything verified.
	Break *Break `json:"break"`
}

// OK reports whether verification found nothing wrong.
func (r *Report) OK() bool { return r.Break == nil }

// maxLineBytes bounds one NDJSON line: an event is at most a few tens of KiB.
const maxLineBytes = 4 << 20

// Verify checks the events read from lines, one NDJSON export line each in
// seq order (the ndjson export of one workspace), against checkpoints (of
// that workspace). With pub, only checkpoints whose signature pub verifies
// are trusted, and one with a bad signature is a break; without, every
// checkpoint is taken as given (the database check without a key).
//
// The returned error is for failures to read; what verification finds is in
// the Report.
func Verify(lines io.Reader, checkpoints []Checkpoint, pub ed25519.PublicKey) (*Report, error) {
	v := &verifier{rep: &Report{SignaturesChecked: pub != nil}, heads: map[int64][]*Checkpoint{}, bridges: map[string]Bridge{}}
	if err := v.trust(checkpoints, pub); err != nil || v.rep.Break != nil {
		return v.rep, err
	}
	sc := bufio.NewScanner(lines)
	sc.Buffer(make([]byte, 0, 64<<10), maxLineBytes)
	var pending *Record
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		r, err := ParseRecord(line)
		if err != nil {
			v.fail(v.rep.LastSeq+1, BreakChanged, fmt.Sprintf("line %d is not an export line: %v", lineNo, err))
			return v.rep, nil
		}
		if v.workspace == "" {
			v.workspace = r.WorkspaceID
		} else if r.WorkspaceID != v.workspace {
			v.fail(r.Seq, BreakInserted, fmt.Sprintf("line %d belongs to workspace %q, not %q", lineNo, r.WorkspaceID, v.workspace))
			return v.rep, nil
		}
		if pending != nil {
			if v.step(pending, &r); v.rep.Break != nil {
				return v.rep, nil
			}
		}
		pending = &r
	}
	if err := sc.Err(); err != nil {
		return v.rep, fmt.Errorf("reading events: %w", err)
	}
	if pending != nil {
		if v.step(pending, nil); v.rep.Break != nil {
			return v.rep, nil
		}
	}
	v.finish()
	return v.rep, nil
}

type verifier struct {
	rep       *Report
	workspace string
	// heads maps a seq to the trusted checkpoints naming it as head.
	heads map[int64][]*Checkpoint
	// bridges maps a from_hash (hex) to the trusted bridge starting there.
	bridges map[string]Bridge
	// started is set once a chained event was read; last is its hash.
	started bool
	last    []byte
	// beforeLast is the hash the last chained event links to.
	beforeLast []byte
	// lastCheckpointSeq is the highest trusted checkpoint seq.
	lastCheckpointSeq int64
}

func (v *verifier) fail(seq int64, kind, reason string) {
	if v.rep.Break == nil {
		v.rep.Break = &Break{Seq: seq, Kind: kind, Reason: reason}
	}
}

// trust sorts the checkpoints into trusted heads and bridges.
func (v *verifier) trust(checkpoints []Checkpoint, pub ed25519.PublicKey) error {
	for i := range checkpoints {
		cp := &checkpoints[i]
		if pub != nil {
			err := cp.VerifySignature(pub)
			if errors.Is(err, ErrUnsigned) {
				v.rep.Untrusted++
				continue
			}
			if err != nil {
				v.fail(cp.Seq, BreakCheckpoint, fmt.Sprintf("checkpoint %d: %v", cp.ID, err))
				return nil
			}
		}
		v.rep.Checkpoints++
		if cp.Seq > 0 {
			v.heads[cp.Seq] = append(v.heads[cp.Seq], cp)
			v.lastCheckpointSeq = max(v.lastCheckpointSeq, cp.Seq)
		}
		for _, b := range cp.Bridges {
			v.bridges[b.FromHash] = b
		}
	}
	return nil
}

// step checks r, given the record after it (nil at the end).
func (v *verifier) step(r, next *Record) {
	if r.Hash == nil {
		if v.started {
			v.fail(r.Seq, BreakChanged, "the event has no hash, yet events before it are chained")
			return
		}
		v.rep.Unchained++
		return
	}
	if v.started && r.Seq <= v.rep.LastSeq {
		v.fail(r.Seq, BreakReordered, fmt.Sprintf("seq %d comes after seq %d", r.Seq, v.rep.LastSeq))
		return
	}
	if !bytes.Equal(Link(r.PrevHash, r.Body), r.Hash) {
		v.fail(r.Seq, BreakChanged, "the event's content does not match its hash")
		return
	}
	expected := Genesis
	if v.started {
		expected = v.last
	}
	if !bytes.Equal(r.PrevHash, expected) && !v.bridged(expected, r.PrevHash) {
		prev := "the chain's start"
		if v.started {
			prev = fmt.Sprintf("seq %d", v.rep.LastSeq)
		}
		switch {
		case v.started && bytes.Equal(r.PrevHash, v.beforeLast):
			v.fail(v.rep.LastSeq, BreakInserted, fmt.Sprintf("the event is not part of the chain: seq %d links to the event before it", r.Seq))
		case next != nil && next.Hash != nil && bytes.Equal(r.PrevHash, next.Hash):
			v.fail(r.Seq, BreakReordered, fmt.Sprintf("the event links to seq %d, which comes after it", next.Seq))
		case next != nil && bytes.Equal(next.PrevHash, expected):
			v.fail(r.Seq, BreakInserted, fmt.Sprintf("the event is not part of the chain: seq %d links to %s", next.Seq, prev))
		default:
			v.fail(r.Seq, BreakMissing, fmt.Sprintf("events between %s and seq %d are missing: its prev_hash matches no event and no signed prune checkpoint", prev, r.Seq))
		}
		return
	}
	for _, cp := range v.heads[r.Seq] {
		if cp.Hash != hex.EncodeToString(r.Hash) {
			v.fail(r.Seq, BreakChanged, fmt.Sprintf("the chain does not match checkpoint %d (%s): an event at or before seq %d was changed and the chain recomputed", cp.ID, cp.CreatedAt, r.Seq))
			return
		}
		v.rep.Matched++
	}
	delete(v.heads, r.Seq)
	if !v.started {
		v.rep.FirstSeq = r.Seq
	}
	v.beforeLast = r.PrevHash
	v.started = true
	v.last = r.Hash
	v.rep.LastSeq = r.Seq
	v.rep.Events++
}

// bridged reports whether trusted bridges lead from hash from to hash to.
func (v *verifier) bridged(from, to []byte) bool {
	h := hex.EncodeToString(from)
	want := hex.EncodeToString(to)
	for hops := 1; hops <= len(v.bridges); hops++ {
		b, ok := v.bridges[h]
		if !ok {
			return false
		}
		if b.ToHash == want {
			v.rep.BridgesCrossed += hops
			return true
		}
		h = b.ToHash
	}
	return false
}

// finish accounts for the checkpoint heads the chain did not pass through:
// retention may have dropped them (a bridge covers their seq); otherwise
// events are missing.
func (v *verifier) finish() {
	for seq, cps := range v.heads {
		if v.prunedSeq(seq) {
			v.rep.Matched += len(cps)
			delete(v.heads, seq)
		}
	}
	var first int64
	for seq := range v.heads {
		if first == 0 || seq < first {
			first = seq
		}
	}
	if first != 0 {
		cp := v.heads[first][0]
		if first > v.rep.LastSeq {
			v.fail(first, BreakMissing, fmt.Sprintf("the chain ends at seq %d, before checkpoint %d's head at seq %d", v.rep.LastSeq, cp.ID, first))
		} else {
			v.fail(first, BreakMissing, fmt.Sprintf("checkpoint %d's head at seq %d is not in the chain", cp.ID, first))
		}
		return
	}
	if v.rep.LastSeq > v.lastCheckpointSeq {
		v.rep.UnanchoredFrom = max(v.lastCheckpointSeq+1, v.rep.FirstSeq)
	}
}

func (v *verifier) prunedSeq(seq int64) bool {
	for _, b := range v.bridges {
		if seq >= b.FirstSeq && seq <= b.LastSeq {
			return true
		}
	}
	return false
}
