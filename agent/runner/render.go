package runner

import (
	"fmt"
	"strings"
	"text/template"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// render fills an action's {{ .params.NAME }} references (command, script,
// env values, working dir) with the execution's parameter values.
func render(a *opsconductorv1.Action, values map[string]string) (command, script, dir string, env map[string]string, err error) {
	data := map[string]any{"params": values}
	one := func(field, text string) (string, error) {
		if !strings.Contains(text, "{{") {
			return text, nil
		}
		t, err := template.New(field).Option("missingkey=error").Parse(text)
		if err != nil {
			return "", fmt.Errorf("%s: %w", field, err)
		}
		var sb strings.Builder
		if err := t.Execute(&sb, data); err != nil {
			return "", fmt.Errorf("%s: %w", field, err)
		}
		return sb.String(), nil
	}
	if command, err = one("command", a.GetCommand()); err != nil {
		return
	}
	if script, err = one("script", a.GetScript()); err != nil {
		return
	}
	if dir, err = one("working_dir", a.GetWorkingDir()); err != nil {
		return
	}
	env = map[string]string{}
	for k, v := range a.GetEnv() {
		if env[k], err = one("env["+k+"]", v); err != nil {
			return
		}
	}
	return
}

// renderSpec fills parameter references in a plugin's settings (an SSH
// password from a secret parameter, say).
func renderSpec(spec, values map[string]string) (map[string]string, error) {
	if len(spec) == 0 {
		return spec, nil
	}
	data := map[string]any{"params": values}
	out := make(map[string]string, len(spec))
	for k, v := range spec {
		if !strings.Contains(v, "{{") {
			out[k] = v
			continue
		}
		t, err := template.New(k).Option("missingkey=error").Parse(v)
		if err != nil {
			return nil, fmt.Errorf("spec[%s]: %w", k, err)
		}
		var sb strings.Builder
		if err := t.Execute(&sb, data); err != nil {
			return nil, fmt.Errorf("spec[%s]: %w", k, err)
		}
		out[k] = sb.String()
	}
	return out, nil
}

// paramEnv is the environment variables that carry parameter values.
func paramEnv(values map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range values {
		out["OPSCONDUCTOR_PARAM_"+strings.ToUpper(k)] = v
	}
	return out
}
