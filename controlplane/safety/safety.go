// Package safety puts the dangerous-command checker (agent/safety, the same
// code the agents run) in front of the control plane: it warns when a job
// with dangerous commands is saved, lets the executions service refuse to
// run one without an audited override, and serves SafetyService, which
// explains a verdict. It is a safety net against mistakes, not a security
// boundary: someone set on harm can always obfuscate further.
package safety

import (
	"context"
	"fmt"
	"os"

	"connectrpc.com/connect"
	"sigs.k8s.io/yaml"

	"github.com/opsconductor/opsconductor/agent/safety"
	"github.com/opsconductor/opsconductor/controlplane/apperr"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

// LoadConfig reads operator rules and allow-lists from a YAML or JSON file
// (see docs/safety.md); an empty path gives the built-in rules only.
func LoadConfig(path string) (safety.Config, error) {
	var cfg safety.Config
	if path == "" {
		return cfg, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("read safety rules: %w", err)
	}
	if err := yaml.UnmarshalStrict(raw, &cfg); err != nil {
		return cfg, fmt.Errorf("safety rules %s: %w", path, err)
	}
	return cfg, nil
}

// Service checks jobs and commands. It implements
// opsconductorv1connect.SafetyServiceHandler, execution.CommandChecker and
// job.SafetyWarner.
type Service struct {
	checker *safety.Checker
}

var _ opsconductorv1connect.SafetyServiceHandler = (*Service)(nil)

// NewService wraps a checker.
func NewService(checker *safety.Checker) *Service { return &Service{checker: checker} }

// languageOf maps an action's plugin to the language its command is in.
func languageOf(plugin string) safety.Language {
	switch plugin {
	case "powershell", "winrm":
		return safety.PowerShell
	case "cmd":
		return safety.Cmd
	}
	return safety.Shell
}

// CheckJob returns a finding for every blocked command of the job, each
// naming its field.
func (s *Service) CheckJob(job *opsconductorv1.Job) []*opsconductorv1.SafetyFinding {
	var out []*opsconductorv1.SafetyFinding
	for i, a := range job.GetActions() {
		field, text := fmt.Sprintf("job.actions[%d].command", i), a.GetCommand()
		if text == "" {
			field, text = fmt.Sprintf("job.actions[%d].script", i), a.GetScript()
		}
		lang := languageOf(a.GetPlugin())
		if u := a.GetUpload(); u != nil {
			field, text, lang = fmt.Sprintf("job.actions[%d].upload.destination", i), safety.UploadCommand(u.GetDestination()), safety.Shell
		}
		rep := s.checker.Check(lang, text)
		if !rep.Blocked() {
			continue
		}
		for _, f := range rep.Findings {
			pf := toProto(f)
			pf.Field = field
			out = append(out, pf)
		}
	}
	return out
}

func toProto(f safety.Finding) *opsconductorv1.SafetyFinding {
	return &opsconductorv1.SafetyFinding{Rule: f.Rule, Severity: string(f.Severity), Verdict: string(f.Verdict), Reason: f.Reason, Snippet: f.Snippet}
}

func (s *Service) CheckCommand(_ context.Context, req *connect.Request[opsconductorv1.CheckCommandRequest]) (*connect.Response[opsconductorv1.CheckCommandResponse], error) {
	lang := safety.Language(req.Msg.GetLanguage())
	switch lang {
	case "":
		lang = safety.Shell
	case safety.Shell, safety.PowerShell, safety.Cmd:
	default:
		return nil, apperr.InvalidField("language", "must be shell, powershell or cmd, not %q", req.Msg.GetLanguage())
	}
	if req.Msg.GetCommand() == "" {
		return nil, apperr.InvalidField("command", "must not be empty")
	}
	rep := s.checker.Check(lang, req.Msg.GetCommand())
	resp := &opsconductorv1.CheckCommandResponse{Verdict: string(rep.Verdict), Blocked: rep.Blocked()}
	for _, f := range rep.Findings {
		resp.Findings = append(resp.Findings, toProto(f))
	}
	return connect.NewResponse(resp), nil
}
