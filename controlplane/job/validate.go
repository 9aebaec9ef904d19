package job

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/credential"
	"github.com/opsconductor/opsconductor/controlplane/label"
	"github.com/opsconductor/opsconductor/controlplane/params"
	"github.com/opsconductor/opsconductor/controlplane/policy"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// Limits of a job definition.
const (
	MaxNameLength        = 128
	MaxDescriptionLength = 4096
	MaxActions           = 100
	MaxTargets           = 100
	MaxCommandLength     = 64 << 10
	MaxActionTimeout     = 24 * time.Hour
	// DefaultActionTimeout applies when an action sets none.
	DefaultActionTimeout = time.Hour
)

// BuiltinPlugins are the executors every agent has. "" means "shell".
var BuiltinPlugins = []string{"shell", "ssh", "winrm"}

var (
	namePattern   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	envKeyPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// Validate returns every problem of a job definition, each with the path of
// the field under prefix (e.g. "job"). No problems means the job is valid.
//
// plugins lists the executor plugins actions may name besides the
// built-in ones (the fleet's external plugins, from the server's config).
func Validate(prefix string, j *opsconductorv1.Job, plugins ...string) []apperr.Violation {
	known := append(append([]string(nil), BuiltinPlugins...), plugins...)
	var vs []apperr.Violation
	add := func(field, format string, args ...any) {
		vs = append(vs, apperr.Violation{Field: prefix + field, Description: fmt.Sprintf(format, args...)})
	}
	if j == nil {
		add("", "is required")
		return vs
	}
	switch {
	case j.GetName() == "":
		add(".name", "must not be empty")
	case len(j.GetName()) > MaxNameLength:
		add(".name", "must be at most %d characters", MaxNameLength)
	case !namePattern.MatchString(j.GetName()):
		add(".name", "must start with a letter or digit and hold only letters, digits, '.', '_' and '-'")
	}
	if len(j.GetDescription()) > MaxDescriptionLength {
		add(".description", "must be at most %d characters", MaxDescriptionLength)
	}
	for k, v := range j.GetLabels() {
		if err := label.ValidatePair(k, v); err != nil {
			add(".labels["+k+"]", "%v", err)
		}
	}
	switch n := len(j.GetActions()); {
	case n == 0:
		add(".actions", "must have at least one action")
	case n > MaxActions:
		add(".actions", "must have at most %d actions", MaxActions)
	}
	for i, a := range j.GetActions() {
		p := fmt.Sprintf(".actions[%d]", i)
		validateAction(a, known, func(field, format string, args ...any) { add(p+field, format, args...) })
	}
	vs = append(vs, params.ValidateDefs(prefix, j)...)
	if j.GetPolicy() != nil {
		vs = append(vs, policy.Validate(prefix+".policy", j.GetPolicy())...)
	}
	switch n := len(j.GetTargets()); {
	case n == 0:
		add(".targets", "must have at least one target (an agent_id or a selector such as role=web)")
	case n > MaxTargets:
		add(".targets", "must have at most %d targets", MaxTargets)
	}
	for i, t := range j.GetTargets() {
		p := fmt.Sprintf(".targets[%d]", i)
		set := 0
		for _, on := range []bool{t.GetAgentId() != "", t.GetSelector() != "", t.GetRemote() != nil} {
			if on {
				set++
			}
		}
		switch {
		case set == 0:
			add(p, "set agent_id, selector or remote")
		case set > 1:
			add(p, "set only one of agent_id, selector and remote")
		case t.GetSelector() != "":
			if _, err := label.ParseSelector(t.GetSelector()); err != nil {
				add(p+".selector", "malformed label selector: %v", err)
			}
		case t.GetRemote() != nil:
			validateRemote(t.GetRemote(), func(field, format string, args ...any) { add(p+".remote"+field, format, args...) })
		}
	}
	return vs
}

// MaxRemoteHosts bounds the hosts of one remote target.
const MaxRemoteHosts = 5000

// Transports a remote target may name.
var Transports = []string{"ssh", "winrm"}

// remoteOwnedOptions are executor options a remote target sets through its
// own fields; options may not set them behind the fields' back.
var remoteOwnedOptions = []string{"host", "port", "user", "key_file"}

var addressPattern = regexp.MustCompile(`^[A-Za-z0-9._:%-]+$`)

func validateRemote(r *opsconductorv1.RemoteHosts, add func(field, format string, args ...any)) {
	if r.GetVia() == "" {
		add(".via", "must name the jump agents that may reach these hosts, as a label selector such as role=jump")
	} else if _, err := label.ParseSelector(r.GetVia()); err != nil {
		add(".via", "malformed label selector: %v", err)
	}
	if tr := r.GetTransport(); tr != "" && !slices.Contains(Transports, tr) {
		add(".transport", "must be one of %s, got %q", strings.Join(Transports, ", "), tr)
	}
	validatePort(r.GetPort(), ".port", add)
	validateCredential(r.GetCredential(), ".credential", add)
	if r.GetTransport() == "winrm" {
		// WinRM logs in with a password; a key file means nothing there.
		if strings.HasPrefix(r.GetCredential(), CredentialAgentPrefix) {
			add(".credential", "winrm logs in with a password: name a stored password credential, or set options.password")
		}
		for i, h := range r.GetHosts() {
			if strings.HasPrefix(h.GetCredential(), CredentialAgentPrefix) {
				add(fmt.Sprintf(".hosts[%d].credential", i), "winrm logs in with a password: name a stored password credential")
			}
		}
	}
	for _, k := range remoteOwnedOptions {
		if _, ok := r.GetOptions()[k]; ok {
			add(".options["+k+"]", "is set by the target itself: use the hosts' address, port, user and credential fields")
		}
	}
	for k, v := range r.GetLabels() {
		if err := label.ValidatePair(k, v); err != nil {
			add(".labels["+k+"]", "%v", err)
		}
	}
	switch n := len(r.GetHosts()); {
	case n == 0 && r.GetGroup() == "":
		add(".hosts", "must list at least one host, or name an inventory group")
	case n > MaxRemoteHosts:
		add(".hosts", "must list at most %d hosts, got %d", MaxRemoteHosts, n)
	}
	for i, h := range r.GetHosts() {
		vs := ValidateHost(fmt.Sprintf(".hosts[%d]", i), h)
		for _, v := range vs {
			add(v.Field, "%s", v.Description)
		}
	}
	if g := r.GetGroup(); g != "" && !namePattern.MatchString(g) {
		add(".group", "must be an inventory group name, got %q", g)
	}
	if strings.ContainsAny(r.GetUser(), " \t\n@:") {
		add(".user", "must be a plain user name, got %q", r.GetUser())
	}
}

// ValidateHost checks one remote host's fields; violations name them
// under prefix (".hosts[0]", say).
func ValidateHost(prefix string, h *opsconductorv1.RemoteHost) []apperr.Violation {
	var vs []apperr.Violation
	add := func(field, format string, args ...any) {
		vs = append(vs, apperr.Violation{Field: prefix + field, Description: fmt.Sprintf(format, args...)})
	}
	switch a := h.GetAddress(); {
	case a == "":
		add(".address", "must not be empty")
	case len(a) > 253 || !addressPattern.MatchString(a) || strings.HasPrefix(a, "-"):
		add(".address", "must be a host name or IP address, got %q", a)
	}
	validatePort(h.GetPort(), ".port", add)
	validateCredential(h.GetCredential(), ".credential", add)
	if len(h.GetName()) > MaxNameLength {
		add(".name", "must be at most %d characters", MaxNameLength)
	}
	if strings.ContainsAny(h.GetUser(), " \t\n@:") {
		add(".user", "must be a plain user name, got %q", h.GetUser())
	}
	if tr := h.GetTransport(); tr != "" && !slices.Contains(Transports, tr) {
		add(".transport", "must be one of %s, got %q", strings.Join(Transports, ", "), tr)
	}
	if h.GetTransport() == "winrm" && strings.HasPrefix(h.GetCredential(), CredentialAgentPrefix) {
		add(".credential", "winrm logs in with a password: name a stored password credential")
	}
	for k, v := range h.GetLabels() {
		if err := label.ValidatePair(k, v); err != nil {
			add(".labels["+k+"]", "%v", err)
		}
	}
	return vs
}

func validatePort(port int32, field string, add func(field, format string, args ...any)) {
	if port < 0 || port > 65535 {
		add(field, "must be between 1 and 65535 (0: the default), got %d", port)
	}
}

// CredentialAgentPrefix marks a credential kept on the jump agent: the
// rest is the path of a private key file there.
const CredentialAgentPrefix = "agent:"

// validateCredential checks a credential reference: the name of a stored
// credential, or agent:/path of a key file on the jump agent.
func validateCredential(ref, field string, add func(field, format string, args ...any)) {
	if ref == "" {
		return
	}
	if path, ok := strings.CutPrefix(ref, CredentialAgentPrefix); ok {
		if !strings.HasPrefix(path, "/") {
			add(field, "must name an absolute key file path on the jump agent (agent:/etc/opsconductor/keys/id), got %q", ref)
		}
		return
	}
	if !credential.ValidName(ref) {
		add(field, "must be the name of a stored credential or agent:/path/to/key (a key file on the jump agent), got %q", ref)
	}
}

// MaxUploadBytes bounds an upload action's content (it travels in the
// job definition and the task assignment).
const MaxUploadBytes = 1 << 20

func validateUpload(u *opsconductorv1.FileUpload, add func(field, format string, args ...any)) {
	switch d := u.GetDestination(); {
	case d == "":
		add(".upload.destination", "must not be empty")
	case !strings.HasPrefix(d, "/") || strings.HasSuffix(d, "/"):
		add(".upload.destination", "must be an absolute file path, got %q", d)
	}
	if len(u.GetContent()) > MaxUploadBytes {
		add(".upload.content", "must be at most %d bytes, got %d", MaxUploadBytes, len(u.GetContent()))
	}
	if m := u.GetMode(); m != "" {
		if v, err := strconv.ParseUint(m, 8, 32); err != nil || v > 0o777 {
			add(".upload.mode", "must be octal permission bits like 0644, got %q", m)
		}
	}
}

func validateAction(a *opsconductorv1.Action, known []string, add func(field, format string, args ...any)) {
	if len(a.GetName()) > MaxNameLength {
		add(".name", "must be at most %d characters", MaxNameLength)
	}
	if a.GetPlugin() != "" && !slices.Contains(known, a.GetPlugin()) {
		add(".plugin", "unknown plugin %q (known: %v)", a.GetPlugin(), known)
	}
	set := 0
	for _, is := range []bool{a.GetCommand() != "", a.GetScript() != "", a.GetUpload() != nil} {
		if is {
			set++
		}
	}
	switch {
	case set == 0:
		add(".command", "must not be empty (set command, script or upload)")
	case set > 1:
		add(".command", "set only one of command, script and upload")
	case len(a.GetCommand())+len(a.GetScript()) > MaxCommandLength:
		add(".command", "must be at most %d bytes", MaxCommandLength)
	}
	if u := a.GetUpload(); u != nil {
		validateUpload(u, add)
	}
	for _, v := range policy.ValidateRetry("retry", a.GetRetry()) {
		add("."+v.Field, "%s", v.Description)
	}
	for k := range a.GetEnv() {
		switch {
		case !envKeyPattern.MatchString(k):
			add(".env["+k+"]", "is not a valid environment variable name")
		case strings.HasPrefix(k, "OPSCONDUCTOR_"):
			add(".env["+k+"]", "OPSCONDUCTOR_ variables are set by the agent")
		}
	}
	if t := a.GetTimeout(); t != nil {
		switch d := t.AsDuration(); {
		case !t.IsValid():
			add(".timeout", "is not a valid duration")
		case d < 0:
			add(".timeout", "must not be negative")
		case d > MaxActionTimeout:
			add(".timeout", "must be at most %s", MaxActionTimeout)
		}
	}
}
