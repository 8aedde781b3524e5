package app

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"sync"

	"github.com/robfig/cron/v3"

	"github.com/auditlog/auditlog/app/config"
	"github.com/auditlog/auditlog/app/schedule"

	"github.com/auditlog/auditlog/outbox/integrity"
)

// errVerifyFailed makes `auditlog verify` exit 1 after it printed the break.
var errVerifyFailed = errors.New("verification failed")

// signer loads integrity.signing_key_file; nil when it is not set.
func (e *env) signer() (*integrity.Signer, error) {
	if e.cfg.Integrity.SigningKeyFile == "" {
		return nil, nil
	}
	s, err := integrity.LoadSigner(e.cfg.Integrity.SigningKeyFile)
	if err != nil {
		return nil, fmt.Errorf("integrity.signing_key_file: %w", err)
	}
	return s, nil
}

// checkpointer returns the checkpointer signing with the configured key.
func (e *env) checkpointer(db *database) (*integrity.Checkpointer, error) {
	s, err := e.signer()
	if err != nil {
		return nil, err
	}
	return integrity.NewCheckpointer(db.Pool, s, e.logger)
}

func runIntegrity(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("integrity needs keygen or checkpoint")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "keygen":
		fs := newFlagSet("integrity keygen", e.stderr)
		out := fs.String("out", e.cfg.Integrity.SigningKeyFile, "where to write the private key (default: integrity.signing_key_file); the public key goes to OUT.pub")
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		if *out == "" || fs.NArg() > 0 {
			return usagef("integrity keygen needs --out (or integrity.signing_key_file)")
		}
		s, err := integrity.GenerateKeyFile(*out)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "wrote %s (keep it secret) and %s; give auditors the public key:\n", *out, *out+".pub")
		fmt.Fprintf(e.stdout, "key_id=%s\npublic_key=%s\n", s.KeyID(), integrity.EncodePublicKey(s.PublicKey()))
		return nil
	case "checkpoint":
		fs := newFlagSet("integrity checkpoint", e.stderr)
		ws := fs.String("workspace", "", "checkpoint this workspace even if unchanged (default: every workspace whose chain grew)")
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		if fs.NArg() > 0 {
			return usagef("unexpected argument %q", fs.Arg(0))
		}
		return withDatabase(ctx, e, func(db *database) error {
			cp, err := e.checkpointer(db)
			if err != nil {
				return err
			}
			if cp.Signer() == nil {
				fmt.Fprintln(e.stderr, "warning: integrity.signing_key_file is not set; the checkpoints are unsigned")
			}
			made, err := cp.Checkpoint(ctx, *ws, integrity.KindManual, *ws != "")
			if err != nil {
				return err
			}
			for _, c := range made {
				fmt.Fprintf(e.stdout, "checkpoint %d workspace=%s seq=%d hash=%s\n", c.ID, c.WorkspaceID, c.Seq, c.Hash)
			}
			fmt.Fprintf(e.stderr, "%d checkpoint(s) made\n", len(made))
			return nil
		})
	default:
		return usagef("unknown integrity command %q", sub)
	}
}

// startCheckpoints makes signed checkpoints on spec (cron, UTC) until the
// returned stop is called; stop waits for a run in progress and for the
// scheduler to end. Without a signing key nothing is scheduled.
func startCheckpoints(ctx context.Context, cp *integrity.Checkpointer, spec string, log *slog.Logger) (stop func(), err error) {
	if cp.Signer() == nil {
		log.Warn("integrity: integrity.signing_key_file is not set: no checkpoints are signed or scheduled (README \"Integrity\")")
		return func() {}, nil
	}
	sched, err := config.ScheduleParser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("integrity.checkpoint_schedule: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c, chain, stopped := schedule.New(log, "integrity")
	c.Schedule(sched, chain.Then(cron.FuncJob(func() {
		if _, err := cp.Checkpoint(runCtx, "", integrity.KindScheduled, false); err != nil && runCtx.Err() == nil {
			log.Error("integrity: scheduled checkpoint failed", "error", err)
		}
	})))
	c.Start()
	log.Info("integrity: checkpoints scheduled", "schedule", spec, "key_id", cp.Signer().KeyID())
	return sync.OnceFunc(func() {
		<-c.Stop().Done()
		<-stopped
		cancel()
	}), nil
}

// checkpointsPage is one JSON value of a --checkpoints file: the body of
// GET /v1/checkpoints (one page), or a bare array of checkpoints.
type checkpointsPage struct {
	Data *[]integrity.Checkpoint `json:"data"`
	// Error is set when an error response was saved instead of a page.
	Error json.RawMessage `json:"error"`
}

// readCheckpoints reads a --checkpoints file: one or more saved responses
// of GET /v1/checkpoints one after the other (the pages of a download, as
// `curl ... >> checkpoints.json` appends them, with or without whitespace
// between), or bare arrays of checkpoints. A checkpoint saved twice (a
// download appended again) is kept once; one id with two different
// contents is refused, as is a saved error response.
func readCheckpoints(path string) ([]integrity.Checkpoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading checkpoints: %w", err)
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	var all []integrity.Checkpoint
	byID := map[int64]integrity.Checkpoint{}
	pages := 0
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("reading checkpoints %s: response %d: want the JSON of GET /v1/checkpoints: %w", path, pages+1, err)
		}
		pages++
		cps, err := parseCheckpointsPage(raw)
		if err != nil {
			return nil, fmt.Errorf("reading checkpoints %s: response %d: %w", path, pages, err)
		}
		for _, cp := range cps {
			seen, ok := byID[cp.ID]
			if !ok {
				byID[cp.ID] = cp
				all = append(all, cp)
				continue
			}
			if !reflect.DeepEqual(seen, cp) {
				return nil, fmt.Errorf("reading checkpoints %s: response %d: checkpoint %d appears twice with different contents: the file mixes downloads of different workspaces or servers", path, pages, cp.ID)
			}
		}
	}
	if pages == 0 {
		return nil, fmt.Errorf("reading checkpoints %s: the file is empty: want the JSON of GET /v1/checkpoints", path)
	}
	return all, nil
}

// parseCheckpointsPage reads one JSON value of a --checkpoints file.
func parseCheckpointsPage(raw json.RawMessage) ([]integrity.Checkpoint, error) {
	var list []integrity.Checkpoint
	if err := json.Unmarshal(raw, &list); err == nil {
		return list, nil
	}
	var p checkpointsPage
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("want the JSON of GET /v1/checkpoints: %w", err)
	}
	if p.Error != nil {
		return nil, fmt.Errorf("an error response was saved, not checkpoints: %s", p.Error)
	}
	if p.Data == nil {
		return nil, errors.New(`want the JSON of GET /v1/checkpoints: no "data"`)
	}
	return *p.Data, nil
}

func runVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet("verify", e.stderr)
	ws := fs.String("workspace", "", "verify this workspace's chain in the database")
	file := fs.String("file", "", "verify an ndjson export file offline (no database)")
	pubFlag := fs.String("public-key", "", "Ed25519 public key (base64, or a .pub file) that signed the checkpoints; default for --workspace: the configured signing key's")
	cpFile := fs.String("checkpoints", "", "with --file: the saved responses of GET /v1/checkpoints, every page of the download one after the other in one file")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 || (*ws == "") == (*file == "") {
		return usagef("verify needs exactly one of --workspace W or --file F")
	}
	var pub ed25519.PublicKey
	if *pubFlag != "" {
		p, err := integrity.ParsePublicKey(*pubFlag)
		if err != nil {
			return err
		}
		pub = p
	}

	var rep *integrity.Report
	if *file != "" {
		if pub == nil || *cpFile == "" {
			return usagef("verify --file needs --public-key and --checkpoints: offline, only signed checkpoints anchor the chain")
		}
		cps, err := readCheckpoints(*cpFile)
		if err != nil {
			return err
		}
		f, err := os.Open(*file)
		if err != nil {
			return fmt.Errorf("opening export: %w", err)
		}
		defer f.Close()
		if rep, err = integrity.Verify(f, cps, pub); err != nil {
			return err
		}
	} else {
		err := withDatabase(ctx, e, func(db *database) error {
			if pub == nil {
				s, err := e.signer()
				if err != nil {
					return err
				}
				if s != nil {
					pub = s.PublicKey()
				}
			}
			var err error
			rep, err = integrity.VerifyWorkspace(ctx, db.Pool, *ws, pub)
			return err
		})
		if err != nil {
			return err
		}
	}
	printReport(e.stdout, rep, *asJSON)
	if !rep.OK() {
		return errVerifyFailed
	}
	return nil
}

func printReport(w io.Writer, rep *integrity.Report, asJSON bool) {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
		return
	}
	if rep.OK() {
		fmt.Fprintf(w, "ok: %d chained events (seq %d..%d) verified", rep.Events, rep.FirstSeq, rep.LastSeq)
	} else {
		fmt.Fprintf(w, "BROKEN at seq %d: %s: %s\n", rep.Break.Seq, rep.Break.Kind, rep.Break.Reason)
		fmt.Fprintf(w, "before the break: %d chained events verified", rep.Events)
	}
	fmt.Fprintf(w, "; checkpoints trusted %d, matched %d", rep.Checkpoints, rep.Matched)
	if rep.Untrusted > 0 {
		fmt.Fprintf(w, ", unsigned (ignored) %d", rep.Untrusted)
	}
	if rep.BridgesCrossed > 0 {
		fmt.Fprintf(w, "; %d stretch(es) removed by retention crossed", rep.BridgesCrossed)
	}
	if rep.Unchained > 0 {
		fmt.Fprintf(w, "; %d events stored before the chain existed", rep.Unchained)
	}
	fmt.Fprintln(w)
	if !rep.SignaturesChecked {
		fmt.Fprintln(w, "warning: no public key given: checkpoint signatures were not checked")
	}
	if rep.OK() && rep.UnanchoredFrom > 0 {
		fmt.Fprintf(w, "note: events from seq %d on are chained but not yet under a signed checkpoint\n", rep.UnanchoredFrom)
	}
}
