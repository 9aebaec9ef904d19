// Package inventory keeps the remote hosts jobs reach through jump agents,
// and the groups a remote target can name. Hosts come from its API or
// from a periodic import of an external inventory: an HTTP endpoint
// returning an opsconductor.v1.InventoryDocument as JSON. An import is all
// or nothing: a failed one (unreachable, malformed, an invalid host) keeps
// the last good inventory and records why.
package inventory

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/job"
	"github.com/opsconductor/opsconductor/controlplane/label"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Service implements opsconductorv1connect.InventoryServiceHandler and
// gives the target resolver the hosts of a group.
type Service struct {
	store  *Store
	sync   *Syncer // nil: no external inventory
	logger *zap.Logger
}

var _ opsconductorv1connect.InventoryServiceHandler = (*Service)(nil)

// NewService builds the service; sync may be nil.
func NewService(st *Store, sync *Syncer, logger *zap.Logger) *Service {
	return &Service{store: st, sync: sync, logger: logger.Named("inventory")}
}

func tsOrNil(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return timestamppb.New(*t)
}

func toHostProto(h Host) *opsconductorv1.InventoryHost {
	return &opsconductorv1.InventoryHost{Name: h.Name, Address: h.Address, Port: h.Port, Transport: h.Transport, User: h.User,
		Credential: h.Credential, Labels: h.Labels, Groups: h.Groups, Source: h.Source,
		CreateTime: timestamppb.New(h.CreatedAt), UpdateTime: timestamppb.New(h.UpdatedAt)}
}

func toGroupProto(g Group) *opsconductorv1.InventoryGroup {
	return &opsconductorv1.InventoryGroup{Name: g.Name, Description: g.Description, Labels: g.Labels, Source: g.Source, HostCount: int32(g.HostCount)}
}

// validateHost checks a host under prefix ("host", "hosts[3]").
func validateHost(prefix string, h *opsconductorv1.InventoryHost) []apperr.Violation {
	var vs []apperr.Violation
	if h == nil {
		return []apperr.Violation{{Field: prefix, Description: "is required"}}
	}
	if !namePattern.MatchString(h.GetName()) {
		vs = append(vs, apperr.Violation{Field: prefix + ".name", Description: fmt.Sprintf("must be 1-128 letters, digits, '.', '_' or '-', got %q", h.GetName())})
	}
	vs = append(vs, job.ValidateHost(prefix, &opsconductorv1.RemoteHost{Address: h.GetAddress(), Port: h.GetPort(), User: h.GetUser(),
		Credential: h.GetCredential(), Labels: h.GetLabels(), Transport: h.GetTransport()})...)
	for i, g := range h.GetGroups() {
		if !namePattern.MatchString(g) {
			vs = append(vs, apperr.Violation{Field: fmt.Sprintf("%s.groups[%d]", prefix, i), Description: fmt.Sprintf("must be a group name, got %q", g)})
		}
	}
	return vs
}

func validateGroup(prefix string, g *opsconductorv1.InventoryGroup) []apperr.Violation {
	var vs []apperr.Violation
	if g == nil {
		return []apperr.Violation{{Field: prefix, Description: "is required"}}
	}
	if !namePattern.MatchString(g.GetName()) {
		vs = append(vs, apperr.Violation{Field: prefix + ".name", Description: fmt.Sprintf("must be 1-128 letters, digits, '.', '_' or '-', got %q", g.GetName())})
	}
	if len(g.GetDescription()) > 4096 {
		vs = append(vs, apperr.Violation{Field: prefix + ".description", Description: "must be at most 4096 characters"})
	}
	for k, v := range g.GetLabels() {
		if err := label.ValidatePair(k, v); err != nil {
			vs = append(vs, apperr.Violation{Field: prefix + ".labels[" + k + "]", Description: err.Error()})
		}
	}
	return vs
}

func fromHostProto(h *opsconductorv1.InventoryHost, source string, at time.Time) Host {
	groups := slices.Clone(h.GetGroups())
	slices.Sort(groups)
	return Host{Name: h.GetName(), Address: h.GetAddress(), Port: h.GetPort(), Transport: h.GetTransport(), User: h.GetUser(),
		Credential: h.GetCredential(), Labels: h.GetLabels(), Groups: slices.Compact(groups), Source: source, CreatedAt: at, UpdatedAt: at}
}

func hostErr(name string, err error) error {
	switch {
	case errors.Is(err, store.ErrConflict):
		return apperr.AlreadyExists("a host named %q already exists", name)
	case errors.Is(err, store.ErrNotFound):
		return apperr.NotFound("%v", err)
	}
	return err
}

func (s *Service) CreateHost(ctx context.Context, req *connect.Request[opsconductorv1.CreateHostRequest]) (*connect.Response[opsconductorv1.CreateHostResponse], error) {
	if vs := validateHost("host", req.Msg.GetHost()); len(vs) > 0 {
		return nil, apperr.Invalid("host", vs)
	}
	h := fromHostProto(req.Msg.GetHost(), SourceAPI, time.Now().UTC().Truncate(time.Microsecond))
	if err := s.store.HostCreate(ctx, h); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, apperr.InvalidField("host.groups", "%v: create the group first", err)
		}
		return nil, hostErr(h.Name, err)
	}
	got, err := s.store.HostGet(ctx, h.Name)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.CreateHostResponse{Host: toHostProto(got)}), nil
}

func (s *Service) ListHosts(ctx context.Context, req *connect.Request[opsconductorv1.ListHostsRequest]) (*connect.Response[opsconductorv1.ListHostsResponse], error) {
	var sel label.Selector
	if req.Msg.GetLabelSelector() != "" {
		var err error
		if sel, err = label.ParseSelector(req.Msg.GetLabelSelector()); err != nil {
			return nil, apperr.InvalidField("label_selector", "malformed label selector: %v", err)
		}
	}
	hs, err := s.store.HostList(ctx, req.Msg.GetGroup())
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListHostsResponse{}
	for _, h := range hs {
		if req.Msg.GetLabelSelector() == "" || sel.Matches(h.Labels) {
			resp.Hosts = append(resp.Hosts, toHostProto(h))
		}
	}
	return connect.NewResponse(resp), nil
}

func (s *Service) GetHost(ctx context.Context, req *connect.Request[opsconductorv1.GetHostRequest]) (*connect.Response[opsconductorv1.GetHostResponse], error) {
	h, err := s.store.HostGet(ctx, req.Msg.GetName())
	if err != nil {
		return nil, hostErr(req.Msg.GetName(), err)
	}
	return connect.NewResponse(&opsconductorv1.GetHostResponse{Host: toHostProto(h)}), nil
}

func (s *Service) UpdateHost(ctx context.Context, req *connect.Request[opsconductorv1.UpdateHostRequest]) (*connect.Response[opsconductorv1.UpdateHostResponse], error) {
	if vs := validateHost("host", req.Msg.GetHost()); len(vs) > 0 {
		return nil, apperr.Invalid("host", vs)
	}
	cur, err := s.store.HostGet(ctx, req.Msg.GetHost().GetName())
	if err != nil {
		return nil, hostErr(req.Msg.GetHost().GetName(), err)
	}
	if cur.Source == SourceSync {
		return nil, apperr.FailedPrecondition("host %s comes from the external inventory: change it there (the next import would undo this)", cur.Name)
	}
	h := fromHostProto(req.Msg.GetHost(), cur.Source, time.Now().UTC().Truncate(time.Microsecond))
	if err := s.store.HostUpdate(ctx, h); err != nil {
		if errors.Is(err, store.ErrNotFound) { // the host exists: a group does not
			return nil, apperr.InvalidField("host.groups", "%v: create the group first", err)
		}
		return nil, err
	}
	got, err := s.store.HostGet(ctx, h.Name)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.UpdateHostResponse{Host: toHostProto(got)}), nil
}

func (s *Service) DeleteHost(ctx context.Context, req *connect.Request[opsconductorv1.DeleteHostRequest]) (*connect.Response[opsconductorv1.DeleteHostResponse], error) {
	cur, err := s.store.HostGet(ctx, req.Msg.GetName())
	if err != nil {
		return nil, hostErr(req.Msg.GetName(), err)
	}
	if cur.Source == SourceSync {
		return nil, apperr.FailedPrecondition("host %s comes from the external inventory: remove it there (the next import would bring it back)", cur.Name)
	}
	if err := s.store.HostDelete(ctx, req.Msg.GetName()); err != nil {
		return nil, hostErr(req.Msg.GetName(), err)
	}
	return connect.NewResponse(&opsconductorv1.DeleteHostResponse{}), nil
}

func (s *Service) CreateGroup(ctx context.Context, req *connect.Request[opsconductorv1.CreateGroupRequest]) (*connect.Response[opsconductorv1.CreateGroupResponse], error) {
	if vs := validateGroup("group", req.Msg.GetGroup()); len(vs) > 0 {
		return nil, apperr.Invalid("group", vs)
	}
	g := req.Msg.GetGroup()
	now := time.Now().UTC().Truncate(time.Microsecond)
	rec := Group{Name: g.GetName(), Description: g.GetDescription(), Labels: g.GetLabels(), Source: SourceAPI, CreatedAt: now, UpdatedAt: now}
	if err := s.store.GroupCreate(ctx, rec); errors.Is(err, store.ErrConflict) {
		return nil, apperr.AlreadyExists("a group named %q already exists", g.GetName())
	} else if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.CreateGroupResponse{Group: toGroupProto(rec)}), nil
}

func (s *Service) ListGroups(ctx context.Context, _ *connect.Request[opsconductorv1.ListGroupsRequest]) (*connect.Response[opsconductorv1.ListGroupsResponse], error) {
	gs, err := s.store.GroupList(ctx)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListGroupsResponse{}
	for _, g := range gs {
		resp.Groups = append(resp.Groups, toGroupProto(g))
	}
	return connect.NewResponse(resp), nil
}

func (s *Service) GetGroup(ctx context.Context, req *connect.Request[opsconductorv1.GetGroupRequest]) (*connect.Response[opsconductorv1.GetGroupResponse], error) {
	g, err := s.store.GroupGet(ctx, req.Msg.GetName())
	if errors.Is(err, store.ErrNotFound) {
		return nil, apperr.NotFound("group %q not found", req.Msg.GetName())
	} else if err != nil {
		return nil, err
	}
	hs, err := s.store.HostList(ctx, g.Name)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.GetGroupResponse{Group: toGroupProto(g)}
	for _, h := range hs {
		resp.Hosts = append(resp.Hosts, toHostProto(h))
	}
	return connect.NewResponse(resp), nil
}

func (s *Service) UpdateGroup(ctx context.Context, req *connect.Request[opsconductorv1.UpdateGroupRequest]) (*connect.Response[opsconductorv1.UpdateGroupResponse], error) {
	if vs := validateGroup("group", req.Msg.GetGroup()); len(vs) > 0 {
		return nil, apperr.Invalid("group", vs)
	}
	g := req.Msg.GetGroup()
	if cur, err := s.store.GroupGet(ctx, g.GetName()); err == nil && cur.Source == SourceSync {
		return nil, apperr.FailedPrecondition("group %s comes from the external inventory: change it there", g.GetName())
	}
	if err := s.store.GroupUpdate(ctx, Group{Name: g.GetName(), Description: g.GetDescription(), Labels: g.GetLabels(),
		UpdatedAt: time.Now().UTC().Truncate(time.Microsecond)}); errors.Is(err, store.ErrNotFound) {
		return nil, apperr.NotFound("group %q not found", g.GetName())
	} else if err != nil {
		return nil, err
	}
	got, err := s.store.GroupGet(ctx, g.GetName())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.UpdateGroupResponse{Group: toGroupProto(got)}), nil
}

func (s *Service) DeleteGroup(ctx context.Context, req *connect.Request[opsconductorv1.DeleteGroupRequest]) (*connect.Response[opsconductorv1.DeleteGroupResponse], error) {
	err := s.store.GroupDelete(ctx, req.Msg.GetName())
	switch {
	case errors.Is(err, ErrInUse):
		return nil, apperr.FailedPrecondition("%v: move or delete them first", err)
	case errors.Is(err, store.ErrNotFound):
		return nil, apperr.NotFound("group %q not found", req.Msg.GetName())
	case err != nil:
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.DeleteGroupResponse{}), nil
}

func (s *Service) status(ctx context.Context) (*opsconductorv1.SyncStatus, error) {
	st, err := s.store.SyncState(ctx)
	if err != nil {
		return nil, err
	}
	out := &opsconductorv1.SyncStatus{LastAttemptTime: tsOrNil(st.LastAttempt), LastSuccessTime: tsOrNil(st.LastSuccess),
		LastError: st.LastError, Hosts: int32(st.Hosts), Skipped: st.Skipped}
	if s.sync != nil {
		out.Url, out.Interval = RedactURL(s.sync.cfg.URL), durationpb.New(s.sync.cfg.Interval)
	}
	return out, nil
}

func (s *Service) GetSyncStatus(ctx context.Context, _ *connect.Request[opsconductorv1.GetSyncStatusRequest]) (*connect.Response[opsconductorv1.GetSyncStatusResponse], error) {
	st, err := s.status(ctx)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.GetSyncStatusResponse{Status: st}), nil
}

func (s *Service) SyncInventory(ctx context.Context, _ *connect.Request[opsconductorv1.SyncInventoryRequest]) (*connect.Response[opsconductorv1.SyncInventoryResponse], error) {
	if s.sync == nil {
		return nil, apperr.FailedPrecondition("no external inventory is configured (--inventory-url)")
	}
	// A failed import is reported in the status, not as a failed call.
	_ = s.sync.Run(ctx)
	st, err := s.status(ctx)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.SyncInventoryResponse{Status: st}), nil
}

// GroupHosts returns the hosts of group as remote hosts, with the group's
// labels under each host's own, and whether the group exists.
func (s *Service) GroupHosts(ctx context.Context, group string) ([]*opsconductorv1.RemoteHost, bool, error) {
	g, err := s.store.GroupGet(ctx, group)
	if errors.Is(err, store.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	hs, err := s.store.HostList(ctx, group)
	if err != nil {
		return nil, false, err
	}
	out := make([]*opsconductorv1.RemoteHost, len(hs))
	for i, h := range hs {
		labels := map[string]string{}
		for k, v := range g.Labels {
			labels[k] = v
		}
		for k, v := range h.Labels {
			labels[k] = v
		}
		out[i] = &opsconductorv1.RemoteHost{Address: h.Address, Port: h.Port, Name: h.Name, User: h.User, Credential: h.Credential,
			Labels: labels, Transport: h.Transport}
	}
	return out, true, nil
}
