package registry

import (
	"cmp"
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

// resolveRemote turns the remote targets into one entry per host (a host
// listed twice, by address and port, runs once), each with the jump agents
// matching the target's via selector that can run its transport: those
// that reported the transport's plugin, or reported no plugins at all
// (older agents, not checked). It returns the indexes of remote targets no
// jump agent can serve.
func (r *Registry) resolveRemote(targets []*opsconductorv1.Target, agents []AgentRecord) ([]*opsconductorv1.ResolvedAgent, []int, error) {
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
		transport := cmp.Or(rt.GetTransport(), DefaultTransport)
		var jump []*opsconductorv1.ResolvedAgent
		for _, a := range agents {
			if via.Matches(a.Labels) && (len(a.Plugins) == 0 || slices.Contains(a.Plugins, transport)) {
				jump = append(jump, r.resolved(a))
			}
		}
		if len(jump) == 0 {
			unmatched = append(unmatched, i)
			continue
		}
		defPort, defUser := transportDefaults(transport)
		for _, h := range rt.GetHosts() {
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
			out = append(out, &opsconductorv1.ResolvedAgent{
				Name:   name,
				Online: slices.ContainsFunc(jump, (*opsconductorv1.ResolvedAgent).GetOnline),
				Labels: maps.Clone(rt.GetLabels()),
				Remote: &opsconductorv1.RemoteEndpoint{
					Name:       name,
					Address:    h.GetAddress(),
					Port:       port,
					Transport:  transport,
					User:       cmp.Or(h.GetUser(), rt.GetUser(), defUser),
					Credential: cmp.Or(h.GetCredential(), rt.GetCredential()),
					Options:    maps.Clone(rt.GetOptions()),
					Labels:     maps.Clone(rt.GetLabels()),
					Via:        rt.GetVia(),
				},
				JumpAgents: jump,
			})
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
