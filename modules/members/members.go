// Package members is the helpdesk's member administration: invite, remove
// and change the role of the people of a workspace. Each change and its
// audit event (member.invite, member.remove, member.role_change) commit in
// one transaction.
//
// Rules: only admins and owners manage members; nobody grants a role above
// their own or touches a member ranked above them; a workspace always keeps
// at least one owner.
package members

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/modules/internal/web"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/outbox"
)

// Audit actions recorded by this module.
const (
	ActionInvite     = "member.invite"
	ActionRemove     = "member.remove"
	ActionRoleChange = "member.role_change"
)

// maxNameLen matches the audit actor's name limit, so a member's name always
// fits the events it appears in.
const maxNameLen = 256

// slackUserRe is the shape of a Slack user id (U... or W... for Enterprise Grid).
var slackUserRe = regexp.MustCompile(`^[UW][A-Z0-9]{2,31}$`)

const (
	insertMemberSQL = `
INSERT INTO members (id, workspace_id, email, name, role, token_hash, slack_user_id)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING created_at`
	listMembersSQL = `
SELECT id, email, name, role, slack_user_id, created_at
FROM members WHERE workspace_id = $1 ORDER BY created_at, id`
	// lockTargetAndOwnersSQL locks the target and every owner of the
	// workspace in id order (one statement, so two concurrent demotions
	// cannot deadlock), which serialises every change that could leave the
	// workspace without an owner.
	lockTargetAndOwnersSQL = `
SELECT id, email, name, role FROM members
WHERE workspace_id = $1 AND (id = $2 OR role = 'owner')
ORDER BY id
FOR UPDATE`
	deleteMemberSQL     = `DELETE FROM members WHERE workspace_id = $1 AND id = $2`
	updateMemberRoleSQL = `UPDATE members SET role = $3, updated_at = now() WHERE workspace_id = $1 AND id = $2`
)

// Module serves /app/members.
type Module struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
}

// New returns the members module over pool.
func New(pool *pgxpool.Pool, logger *slog.Logger) (*Module, error) {
	if err := web.CheckDeps("members", pool, logger); err != nil {
		return nil, err
	}
	return &Module{pool: pool, logger: logger.With(slog.String("module", "members"))}, nil
}

// Register mounts the routes on r, which must authenticate members with
// session.Auth.Middleware:
//
//	GET    /members            list (any member)
//	POST   /members            invite (admin)
//	DELETE /members/:id        remove (admin)
//	PATCH  /members/:id/role   change role (admin)
func (m *Module) Register(r *gin.RouterGroup) {
	r.GET("/members", session.Require(session.RoleViewer), m.list)
	r.POST("/members", session.Require(session.RoleAdmin), m.invite)
	r.DELETE("/members/:id", session.Require(session.RoleAdmin), m.remove)
	r.PATCH("/members/:id/role", session.Require(session.RoleAdmin), m.changeRole)
}

// NewMember is who to invite.
type NewMember struct {
	Email string
	Name  string
	Role  session.Role
	// SlackUserID links the member's Slack account; empty for none.
	SlackUserID string
}

// normalise validates n and returns it trimmed and lower-cased where due.
func (n NewMember) normalise() (NewMember, *web.Error) {
	email, verr := web.Email("email", n.Email)
	if verr != nil {
		return n, verr
	}
	n.Email = email
	n.Name = strings.TrimSpace(n.Name)
	if verr := web.Text("name", n.Name, maxNameLen); verr != nil {
		return n, verr
	}
	if !n.Role.Valid() {
		return n, web.InvalidError("role", "must be one of owner, admin, agent, viewer")
	}
	n.SlackUserID = strings.TrimSpace(n.SlackUserID)
	if n.SlackUserID != "" && !slackUserRe.MatchString(n.SlackUserID) {
		return n, web.InvalidError("slack_user_id", "must be a Slack user id such as U024BE7LH")
	}
	return n, nil
}

// Invited is a new member and its token, which is shown only once.
type Invited struct {
	Member    Member
	Token     string
	CreatedAt time.Time
}

// Member is a member as the API shows it.
type Member struct {
	ID          string  `json:"id"`
	WorkspaceID string  `json:"workspace_id"`
	Email       string  `json:"email"`
	Name        string  `json:"name"`
	Role        string  `json:"role"`
	SlackUserID *string `json:"slack_user_id"`
	CreatedAt   string  `json:"created_at"`
}

// Invite adds a member to workspace ws and records member.invite in the same
// transaction; actor and source come from ctx. Refusals are *web.Error (400
// bad input, 409 duplicate email or Slack user). It is what POST
// /app/members runs and what a command line or test uses to create a
// workspace's first owner (with a system actor in ctx).
func Invite(ctx context.Context, pool *pgxpool.Pool, ws string, n NewMember) (Invited, error) {
	n, verr := n.normalise()
	if verr != nil {
		return Invited{}, verr
	}
	id, err := uuid.NewV7()
	if err != nil {
		return Invited{}, fmt.Errorf("generating member id: %w", err)
	}
	token, hash, err := session.NewToken()
	if err != nil {
		return Invited{}, err
	}
	var slack *string
	if n.SlackUserID != "" {
		slack = &n.SlackUserID
	}
	var created time.Time
	err = outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, insertMemberSQL, id, ws, n.Email, n.Name, string(n.Role), hash, slack).Scan(&created); err != nil {
			switch c, _ := web.UniqueViolation(err); c {
			case "members_email_unique":
				return web.ConflictError("email", "a member with this email already exists in the workspace")
			case "members_slack_user_unique":
				return web.ConflictError("slack_user_id", "this Slack user is already linked to a member")
			}
			return fmt.Errorf("inserting member: %w", err)
		}
		details := map[string]any{"email": n.Email, "role": string(n.Role)}
		if n.Name != "" {
			details["name"] = n.Name
		}
		if slack != nil {
			details["slack_user_id"] = *slack
		}
		return outbox.Record(ctx, tx, outbox.Event{
			WorkspaceID: ws,
			Action:      ActionInvite,
			Resource:    memberResource(id),
			Details:     details,
		})
	})
	if err != nil {
		return Invited{}, err
	}
	return Invited{
		Member: Member{
			ID: id.String(), WorkspaceID: ws, Email: n.Email, Name: n.Name, Role: string(n.Role),
			SlackUserID: slack, CreatedAt: outbox.FormatTime(created),
		},
		Token:     token,
		CreatedAt: created,
	}, nil
}

func memberResource(id uuid.UUID) outbox.Resource {
	return outbox.Resource{Type: "member", IDs: map[string]any{"member": id.String()}}
}

type inviteRequest struct {
	Email       string `json:"email"`
	Name        string `json:"name"`
	Role        string `json:"role"`
	SlackUserID string `json:"slack_user_id"`
}

func (m *Module) invite(c *gin.Context) {
	actor, _ := session.MemberFrom(c)
	var req inviteRequest
	if !web.DecodeJSON(c, web.MaxBodyBytesDefault, &req) {
		return
	}
	role := session.Role(req.Role)
	if role.Valid() && !actor.Role.AtLeast(role) {
		web.Forbidden(c, "you cannot invite a member with a role above your own")
		return
	}
	inv, err := Invite(c.Request.Context(), m.pool, actor.WorkspaceID, NewMember{
		Email: req.Email, Name: req.Name, Role: role, SlackUserID: req.SlackUserID,
	})
	if err != nil {
		web.Abort(c, m.logger, "inviting a member", err)
		return
	}
	c.JSON(http.StatusCreated, gin.H{"member": inv.Member, "token": inv.Token})
}

func (m *Module) list(c *gin.Context) {
	actor, _ := session.MemberFrom(c)
	rows, err := m.pool.Query(c.Request.Context(), listMembersSQL, actor.WorkspaceID)
	if err != nil {
		web.Fail(c, m.logger, "listing members", err)
		return
	}
	out := []Member{}
	for rows.Next() {
		var mem Member
		var id uuid.UUID
		var created time.Time
		if err := rows.Scan(&id, &mem.Email, &mem.Name, &mem.Role, &mem.SlackUserID, &created); err != nil {
			rows.Close()
			web.Fail(c, m.logger, "listing members", err)
			return
		}
		mem.ID, mem.WorkspaceID, mem.CreatedAt = id.String(), actor.WorkspaceID, outbox.FormatTime(created)
		out = append(out, mem)
	}
	if err := rows.Err(); err != nil {
		web.Fail(c, m.logger, "listing members", err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"data": out})
}

// locked is the target of a remove or role change and how many owners the
// workspace has, read under lock.
type locked struct {
	target session.Member
	owners int
}

func lockTargetAndOwners(ctx context.Context, tx pgx.Tx, ws string, id uuid.UUID) (locked, error) {
	rows, err := tx.Query(ctx, lockTargetAndOwnersSQL, ws, id)
	if err != nil {
		return locked{}, fmt.Errorf("locking member and owners: %w", err)
	}
	defer rows.Close()
	var l locked
	found := false
	for rows.Next() {
		var mem session.Member
		var role string
		if err := rows.Scan(&mem.ID, &mem.Email, &mem.Name, &role); err != nil {
			return locked{}, fmt.Errorf("locking member and owners: %w", err)
		}
		mem.Role, mem.WorkspaceID = session.Role(role), ws
		if mem.Role == session.RoleOwner {
			l.owners++
		}
		if mem.ID == id {
			l.target, found = mem, true
		}
	}
	if err := rows.Err(); err != nil {
		return locked{}, fmt.Errorf("locking member and owners: %w", err)
	}
	if !found {
		return locked{}, web.NotFoundError("member")
	}
	return l, nil
}

func (m *Module) remove(c *gin.Context) {
	actor, _ := session.MemberFrom(c)
	id, ok := web.ParseID(c, "id")
	if !ok {
		return
	}
	ctx := c.Request.Context()
	err := outbox.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		l, err := lockTargetAndOwners(ctx, tx, actor.WorkspaceID, id)
		if err != nil {
			return err
		}
		if !actor.Role.AtLeast(l.target.Role) {
			return web.ForbiddenError("you cannot remove a member ranked above you")
		}
		if l.target.Role == session.RoleOwner && l.owners <= 1 {
			return web.ConflictError("", "a workspace keeps at least one owner")
		}
		if _, err := tx.Exec(ctx, deleteMemberSQL, actor.WorkspaceID, id); err != nil {
			return fmt.Errorf("deleting member: %w", err)
		}
		details := map[string]any{"email": l.target.Email, "role": string(l.target.Role)}
		if l.target.Name != "" {
			details["name"] = l.target.Name
		}
		return outbox.Record(ctx, tx, outbox.Event{
			WorkspaceID: actor.WorkspaceID,
			Action:      ActionRemove,
			Resource:    memberResource(id),
			Details:     details,
		})
	})
	if err != nil {
		web.Abort(c, m.logger, "removing a member", err)
		return
	}
	c.Status(http.StatusNoContent)
}

type roleRequest struct {
	Role string `json:"role"`
}

func (m *Module) changeRole(c *gin.Context) {
	actor, _ := session.MemberFrom(c)
	id, ok := web.ParseID(c, "id")
	if !ok {
		return
	}
	var req roleRequest
	if !web.DecodeJSON(c, web.MaxBodyBytesDefault, &req) {
		return
	}
	role := session.Role(req.Role)
	if !role.Valid() {
		web.Invalid(c, "role", "must be one of owner, admin, agent, viewer")
		return
	}
	if !actor.Role.AtLeast(role) {
		web.Forbidden(c, "you cannot grant a role above your own")
		return
	}
	ctx := c.Request.Context()
	var from session.Role
	err := outbox.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		l, err := lockTargetAndOwners(ctx, tx, actor.WorkspaceID, id)
		if err != nil {
			return err
		}
		from = l.target.Role
		if !actor.Role.AtLeast(from) {
			return web.ForbiddenError("you cannot change the role of a member ranked above you")
		}
		if from == role {
			return nil // nothing changes, nothing to record
		}
		if from == session.RoleOwner && l.owners <= 1 {
			return web.ConflictError("role", "a workspace keeps at least one owner")
		}
		if _, err := tx.Exec(ctx, updateMemberRoleSQL, actor.WorkspaceID, id, string(role)); err != nil {
			return fmt.Errorf("updating member role: %w", err)
		}
		return outbox.Record(ctx, tx, outbox.Event{
			WorkspaceID: actor.WorkspaceID,
			Action:      ActionRoleChange,
			Resource:    memberResource(id),
			Details: map[string]any{
				"email":   l.target.Email,
				"changes": map[string]any{"role": map[string]any{"from": string(from), "to": string(role)}},
			},
		})
	})
	if err != nil {
		web.Abort(c, m.logger, "changing a member's role", err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"id": id.String(), "role": string(role), "changed": from != role})
}
