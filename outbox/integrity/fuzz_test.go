package integrity_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/auditlog/auditlog/outbox/integrity"
)

// FuzzVerify feeds arbitrary export files and checkpoint lists to the
// offline verifier: it must never panic, and must never call input with a
// break-free report "ok" unless every line is a chained event whose hash
// matches its content.
func FuzzVerify(f *testing.F) {
	line := `{"hash":"` + hex64('a') + `","prev_hash":"` + hex64('0') + `","seq":1,"action":"a.b","workspace_id":"w"}`
	f.Add([]byte(line+"\n"+line+"\n"), []byte(`[]`))
	f.Add([]byte(`{"seq":1}`), []byte(`{"data":[{"seq":1,"hash":"00","bridges":[{"from_hash":"x","to_hash":"x"}]}]}`))
	f.Add([]byte("\n\n{}\n"), []byte(`[{"seq":2,"hash":"`+hex64('0')+`","bridges":[{"from_hash":"`+hex64('0')+`","to_hash":"`+hex64('0')+`","first_seq":1,"last_seq":3}]}]`))
	f.Fuzz(func(t *testing.T, file, checkpoints []byte) {
		var cps []integrity.Checkpoint
		if json.Unmarshal(checkpoints, &cps) != nil {
			var wrapped struct {
				Data []integrity.Checkpoint `json:"data"`
			}
			_ = json.Unmarshal(checkpoints, &wrapped)
			cps = wrapped.Data
		}
		rep, err := integrity.Verify(bytes.NewReader(file), cps, nil)
		if err != nil || !rep.OK() {
			return
		}
		// An OK report: every non-empty line parses and its hash matches.
		for _, l := range bytes.Split(file, []byte("\n")) {
			l = bytes.TrimSpace(l)
			if len(l) == 0 {
				continue
			}
			r, perr := integrity.ParseRecord(l)
			if perr != nil {
				t.Fatalf("verified a file with an unparsable line %q: %v", l, perr)
			}
			if r.Hash != nil && !bytes.Equal(integrity.Link(r.PrevHash, r.Body), r.Hash) {
				t.Fatalf("verified a line whose hash does not match: %q", l)
			}
		}
	})
}

func hex64(c byte) string { return string(bytes.Repeat([]byte{c}, 64)) }
