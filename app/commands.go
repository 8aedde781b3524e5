package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/app/cliflag"
	"github.com/auditlog/auditlog/app/exportcmd"
	"github.com/auditlog/auditlog/app/partitions"
	"github.com/auditlog/auditlog/modules/members"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/outbox"
	"github.com/auditlog/auditlog/outbox/integrity"
	"github.com/auditlog/auditlog/outbox/relay"
)

func newFlagSet(name string, w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(w)
	return fs
}

// parseFlags parses args with fs; see argumentError.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := cliflag.Parse(fs, args); err != nil {
		return argumentError(fmt.Errorf("%s: %w", fs.Name(), err))
	}
	return nil
}

// argumentError turns err, from parsing a command's arguments, into a
// usage error (exit code 2); -h stays flag.ErrHelp (exit code 0).
func argumentError(err error) error {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return usagef("%v", err)
}

func runKeys(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("keys needs create, list or revoke")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "create":
		fs := newFlagSet("keys create", e.stderr)
		ws := fs.String("workspace", "", "workspace the key belongs to (required)")
		scopes := fs.String("scopes", "", "comma-separated scopes: events:read, events:write (required)")
		name := fs.String("name", "", "a label for the key")
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		if *ws == "" || *scopes == "" || fs.NArg() > 0 {
			return usagef("keys create needs --workspace and --scopes")
		}
		return withDatabase(ctx, e, func(db *database) error {
			key, secret, err := auth.Create(ctx, db.Pool, *ws, *name, strings.Split(*scopes, ","))
			if err != nil {
				return fmt.Errorf("creating key: %w", err)
			}
			fmt.Fprintf(e.stderr, "key %s for workspace %s with scopes %s; the secret is shown once:\n", key.ID, key.WorkspaceID, strings.Join(key.Scopes, ","))
			fmt.Fprintln(e.stdout, secret)
			return nil
		})
	case "list":
		fs := newFlagSet("keys list", e.stderr)
		ws := fs.String("workspace", "", "workspace (required)")
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		if *ws == "" || fs.NArg() > 0 {
			return usagef("keys list needs --workspace")
		}
		return withDatabase(ctx, e, func(db *database) error {
			keys, err := auth.List(ctx, db.Pool, *ws)
			if err != nil {
				return fmt.Errorf("listing keys: %w", err)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tSCOPES\tCREATED\tLAST USED\tREVOKED")
			for _, k := range keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Name, strings.Join(k.Scopes, ","),
					fmtTime(&k.CreatedAt), fmtTime(k.LastUsedAt), fmtTime(k.RevokedAt))
			}
			return tw.Flush()
		})
	case "revoke":
		if len(args) != 1 {
			return usagef("keys revoke needs exactly one key ID")
		}
		return withDatabase(ctx, e, func(db *database) error {
			if err := auth.Revoke(ctx, db.Pool, args[0]); err != nil {
				return fmt.Errorf("revoking key %s: %w", args[0], err)
			}
			fmt.Fprintf(e.stdout, "revoked %s\n", args[0])
			return nil
		})
	default:
		return usagef("unknown keys command %q", sub)
	}
}

func fmtTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func runExport(ctx context.Context, e *env, args []string) error {
	// Parsed before the database is opened (or the embedded one started),
	// so a mistake is told at once.
	req, err := exportcmd.Parse(args, e.stderr)
	if err != nil {
		return argumentError(err)
	}
	return withDatabase(ctx, e, func(db *database) error {
		rec, err := e.recorder()
		if err != nil {
			return err
		}
		return exportcmd.Export(ctx, db.Pool, exportcmd.Options{
			CSVFormulaGuard: e.cfg.Export.CSVFormulaGuard,
			Recorder:        rec,
		}, req, e.stdout, e.stderr)
	})
}

// maintainer returns the partition maintenance, signing prune checkpoints
// with cp before each drop.
func (e *env) maintainer(db *database, cp *integrity.Checkpointer) (*partitions.Maintainer, error) {
	return partitions.New(db.Pool, partitions.Config{
		Interval:      e.cfg.Retention.PartitionInterval,
		RetentionDays: e.cfg.Retention.Days,
		Premake:       e.cfg.Retention.Premake,
		Logger:        e.logger,
		BeforeDrop:    cp.BeforeDrop,
	})
}

func runPartitions(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("partitions needs list, ensure or prune")
	}
	sub, args := args[0], args[1:]
	fs := newFlagSet("partitions "+sub, e.stderr)
	dryRun := fs.Bool("dry-run", false, "prune: report what would be dropped, change nothing")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	switch sub {
	case "list", "ensure", "prune":
	default:
		return usagef("unknown partitions command %q", sub)
	}
	return withDatabase(ctx, e, func(db *database) error {
		cp, err := e.checkpointer(db)
		if err != nil {
			return err
		}
		m, err := e.maintainer(db, cp)
		if err != nil {
			return err
		}
		switch sub {
		case "list":
			parts, err := m.List(ctx)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tFROM\tTO\tROWS (approx)\tBYTES")
			for _, p := range parts {
				rows := "?" // never analysed: PostgreSQL has no estimate yet
				if p.Rows >= 0 {
					rows = strconv.FormatInt(p.Rows, 10)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", p.Name, p.From.UTC().Format(time.RFC3339), p.To.UTC().Format(time.RFC3339), rows, p.Bytes)
			}
			return tw.Flush()
		case "ensure":
			created, err := m.Ensure(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "created %d partition(s)\n", len(created))
			for _, n := range created {
				fmt.Fprintln(e.stdout, n)
			}
			return nil
		case "prune":
			dropped, err := m.Prune(ctx, *dryRun)
			if err != nil {
				return err
			}
			verb := "dropped"
			if *dryRun {
				verb = "would drop"
			}
			fmt.Fprintf(e.stdout, "%s %d partition(s)\n", verb, len(dropped))
			for _, n := range dropped {
				fmt.Fprintln(e.stdout, n)
			}
			return nil
		default:
			return usagef("unknown partitions command %q", sub)
		}
	})
}

func runDeadLetters(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("deadletters needs list or retry")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "list":
		return withDatabase(ctx, e, func(db *database) error {
			dls, err := relay.ListDeadLetters(ctx, db.Pool, 1000)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "POS\tFAILED AT\tATTEMPTS\tWORKSPACE\tEVENT ID\tACTION\tERROR")
			for _, d := range dls {
				fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t%s\n", d.Pos, d.FailedAt.UTC().Format(time.RFC3339), d.Attempts, d.WorkspaceID, d.ID, d.Action, d.Error)
			}
			return tw.Flush()
		})
	case "retry":
		fs := newFlagSet("deadletters retry", e.stderr)
		all := fs.Bool("all", false, "retry every dead letter")
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		var positions []int64
		for _, a := range fs.Args() {
			n, err := strconv.ParseInt(a, 10, 64)
			if err != nil {
				return usagef("dead letter position %q is not a number", a)
			}
			positions = append(positions, n)
		}
		if *all == (len(positions) > 0) {
			return usagef("deadletters retry needs --all or positions, not both")
		}
		return withDatabase(ctx, e, func(db *database) error {
			retry := func() (int, error) { return relay.RetryDeadLetters(ctx, db.Pool, positions) }
			if *all {
				retry = func() (int, error) { return relay.RetryAllDeadLetters(ctx, db.Pool) }
			}
			n, err := retry()
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "moved %d dead letter(s) back to the outbox\n", n)
			return nil
		})
	default:
		return usagef("unknown deadletters command %q", sub)
	}
}

// runMembers adds a member to the in-app helpdesk, typically a workspace's
// first owner, who can then invite the others over HTTP. The event names
// the operator's command as a system actor.
func runMembers(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] != "invite" {
		return usagef("members needs invite")
	}
	fs := newFlagSet("members invite", e.stderr)
	ws := fs.String("workspace", "", "workspace (required)")
	email := fs.String("email", "", "member's email (required)")
	name := fs.String("name", "", "member's name")
	role := fs.String("role", "owner", "owner, admin, agent or viewer")
	slackUser := fs.String("slack-user", "", "the member's Slack user id, for Slack interactions")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *ws == "" || *email == "" || fs.NArg() > 0 {
		return usagef("members invite needs --workspace and --email")
	}
	return withDatabase(ctx, e, func(db *database) error {
		rec, err := e.recorder()
		if err != nil {
			return err
		}
		outbox.SetDefault(rec)
		actx := outbox.WithActor(ctx, outbox.Actor{Type: outbox.ActorSystem, ID: "auditlog-cli", Name: cliUser()})
		actx = outbox.WithRequestInfo(actx, outbox.RequestInfo{WorkspaceID: *ws, Source: "system"})
		inv, err := members.Invite(actx, db.Pool, *ws, members.NewMember{
			Email: *email, Name: *name, Role: session.Role(*role), SlackUserID: *slackUser,
		})
		if err != nil {
			return fmt.Errorf("inviting member: %w", err)
		}
		fmt.Fprintf(e.stderr, "member %s (%s) in %s; the token is shown once:\n", inv.Member.ID, inv.Member.Email, *ws)
		fmt.Fprintln(e.stdout, inv.Token)
		return nil
	})
}

// cliUser names the operating-system user running a command, for the
// actor of events the command records; empty (no name) when it cannot be
// told, rather than a placeholder.
func cliUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}
