package registry

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/label"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// Defaults of a remote target.
const (
	DefaultTransport = "ssh"
	DefaultSSHPort   = 22
	DefaultSSHUser   = "root"
	// WinRM over HTTP; options.https "true" wants the port set (5986).
	DefaultWinRMPort = 5985
	DefaultWinRMUser = "Administrator"
)

// transportDefaults are the port and user a transport uses when the
// target sets none.
func transportDefaults(transport string) (int32, string) {
	if transport == "winrm" {
		return DefaultWinRMPort, DefaultWinRMUser
	}
	return DefaultSSHPort, DefaultSSHUser
}

// HostSource gives the hosts of an inventory group (with the group's
// labels merged into each host's) and whether the group exists; the
// inventory service implements it.
type HostSource interface {
	GroupHosts(ctx context.Context, group string) ([]*opsconductorv1.RemoteHost, bool, error)
}

// resolveRemote turns the remote targets into one entry per host (a host
// listed twice, by address and port, runs once): the hosts listed and
// those of the inventory group named. Each gets the jump agents matching
// the target's via selector that can run its transport: those that
// reported the transport's plugin, or reported no plugins at all (older
// agents, not checked). It returns the indexes of remote targets with a
// host no jump agent can serve.
func (r *Registry) resolveRemote(ctx context.Context, targets []*opsconductorv1.Target, agents []AgentRecord) ([]*opsconductorv1.ResolvedAgent, []int, error) {
	var out []*opsconductorv1.ResolvedAgent
	var unmatched []int
	seen := map[string]bool{}
	for i, t := range targets {
		rt := t.GetRemote()
		if rt == nil {
			continue
		}
		via, err := label.ParseSelector(rt.GetVia())
		if err != nil {
			return nil, nil, apperr.InvalidField(fmt.Sprintf("job.targets[%d].remote.via", i), "malformed label selector: %v", err)
		}
		hosts := rt.GetHosts()
		if g := rt.GetGroup(); g != "" {
			if r.cfg.Inventory == nil {
				return nil, nil, apperr.FailedPrecondition("job.targets[%d].remote.group %s: this server has no inventory", i, g)
			}
			more, ok, err := r.cfg.Inventory.GroupHosts(ctx, g)
			if err != nil {
				return nil, nil, fmt.Errorf("hosts of inventory group %s: %w", g, err)
			}
			if !ok {
				return nil, nil, apperr.FailedPrecondition("job.targets[%d].remote.group %s does not exist in the inventory", i, g)
			}
			if len(more) == 0 && len(hosts) == 0 {
				return nil, nil, apperr.FailedPrecondition("job.targets[%d].remote.group %s has no hosts", i, g)
			}
			hosts = append(slices.Clone(hosts), more...)
		}
		jumpers := map[string][]*opsconductorv1.ResolvedAgent{}
		jumpFor := func(transport string) []*opsconductorv1.ResolvedAgent {
			if j, ok := jumpers[transport]; ok {
				return j
			}
			var j []*opsconductorv1.ResolvedAgent
			for _, a := range agents {
				if via.Matches(a.Labels) && (len(a.Plugins) == 0 || slices.Contains(a.Plugins, transport)) {
					j = append(j, r.resolved(a))
				}
			}
			jumpers[transport] = j
			return j
		}
		served := true
		for _, h := range hosts {
			transport := cmp.Or(h.GetTransport(), rt.GetTransport(), DefaultTransport)
			jump := jumpFor(transport)
			if len(jump) == 0 {
				served = false
				continue
			}
			defPort, defUser := transportDefaults(transport)
			port := cmp.Or(h.GetPort(), rt.GetPort(), defPort)
			key := h.GetAddress() + ":" + strconv.Itoa(int(port))
			if seen[key] {
				continue
			}
			seen[key] = true
			name := h.GetName()
			if name == "" {
				name = h.GetAddress()
				if port != defPort {
					name = key
				}
			}
			labels := maps.Clone(rt.GetLabels())
			if labels == nil {
				labels = map[string]string{}
			}
			maps.Copy(labels, h.GetLabels())
			out = append(out, &opsconductorv1.ResolvedAgent{
				Name:   name,
				Online: slices.ContainsFunc(jump, (*opsconductorv1.ResolvedAgent).GetOnline),
				Labels: labels,
				Remote: &opsconductorv1.RemoteEndpoint{
					Name:       name,
					Address:    h.GetAddress(),
					Port:       port,
					Transport:  transport,
					User:       cmp.Or(h.GetUser(), rt.GetUser(), defUser),
					Credential: cmp.Or(h.GetCredential(), rt.GetCredential()),
					Options:    maps.Clone(rt.GetOptions()),
					Labels:     maps.Clone(labels),
					Via:        rt.GetVia(),
				},
				JumpAgents: jump,
			})
		}
		if !served {
			unmatched = append(unmatched, i)
		}
	}
	return out, unmatched, nil
}

// Unmatched says why a target resolved to nothing.
func Unmatched(t *opsconductorv1.Target) string {
	switch {
	case t.GetRemote() != nil:
		return fmt.Sprintf("remote.via %s matches no enrolled agent with the %s plugin", t.GetRemote().GetVia(), cmp.Or(t.GetRemote().GetTransport(), DefaultTransport))
	case t.GetAgentId() != "":
		return "agent_id " + t.GetAgentId() + " matches no enrolled agent"
	default:
		return "selector " + t.GetSelector() + " matches no enrolled agent"
	}
}
