// Package params checks a job's parameter definitions, the templates its
// actions use them in, and the values an execution supplies.
package params

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"google.golang.org/protobuf/proto"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

// Types a parameter may have.
var Types = []string{"string", "int", "bool", "enum"}

var namePattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// Mask replaces secret values wherever they are shown.
const Mask = "********"

func typeOf(p *opsconductorv1.Parameter) string {
	if p.GetType() == "" {
		return "string"
	}
	return p.GetType()
}

// check reports why value does not fit p ("" when it does).
func check(p *opsconductorv1.Parameter, value string) string {
	switch typeOf(p) {
	case "int":
		if _, err := strconv.ParseInt(value, 10, 64); err != nil {
			return fmt.Sprintf("%q is not an int", value)
		}
	case "bool":
		if _, err := strconv.ParseBool(value); err != nil {
			return fmt.Sprintf("%q is not a bool (true or false)", value)
		}
	case "enum":
		if !slices.Contains(p.GetChoices(), value) {
			return fmt.Sprintf("%q is not one of %v", value, p.GetChoices())
		}
	}
	return ""
}

// ValidateDefs returns every problem of a job's parameter definitions and
// of the templates its actions use them in, each under its field path.
func ValidateDefs(prefix string, job *opsconductorv1.Job) []apperr.Violation {
	var vs []apperr.Violation
	bad := func(field, format string, args ...any) {
		vs = append(vs, apperr.Violation{Field: prefix + field, Description: fmt.Sprintf(format, args...)})
	}
	declared := map[string]string{}
	for i, p := range job.GetParameters() {
		path := fmt.Sprintf(".parameters[%d]", i)
		if !namePattern.MatchString(p.GetName()) {
			bad(path+".name", "must be a letter or _, then up to 63 letters, digits or _")
		} else if _, dup := declared[p.GetName()]; dup {
			bad(path+".name", "%q is declared twice", p.GetName())
		}
		declared[p.GetName()] = ""
		if !slices.Contains(Types, typeOf(p)) {
			bad(path+".type", "must be one of %v, not %q", Types, p.GetType())
			continue
		}
		if typeOf(p) == "enum" && len(p.GetChoices()) == 0 {
			bad(path+".choices", "an enum needs at least one choice")
		}
		if p.GetDefault() != "" {
			if why := check(p, p.GetDefault()); why != "" {
				bad(path+".default", "%s", why)
			}
		}
		if p.GetRequired() && p.GetDefault() != "" {
			bad(path+".default", "a required parameter has no default (drop one of the two)")
		}
	}
	data := map[string]any{"params": declared}
	for i, a := range job.GetActions() {
		fields := map[string]string{"command": a.GetCommand(), "script": a.GetScript(), "working_dir": a.GetWorkingDir()}
		for k, v := range a.GetEnv() {
			fields["env["+k+"]"] = v
		}
		for name, text := range fields {
			if !strings.Contains(text, "{{") {
				continue
			}
			if err := tryTemplate(text, data); err != nil {
				bad(fmt.Sprintf(".actions[%d].%s", i, name), "template: %v", err)
			}
		}
	}
	return vs
}

func tryTemplate(text string, data map[string]any) error {
	t, err := template.New("action").Option("missingkey=error").Parse(text)
	if err != nil {
		return err
	}
	var sb strings.Builder
	return t.Execute(&sb, data)
}

// Resolve checks the values an execution gives against the job's
// definitions and fills defaults. It returns every value and the names of
// the secret ones, or the problems, each under "parameters.NAME".
func Resolve(defs []*opsconductorv1.Parameter, given map[string]string) (map[string]string, []string, []apperr.Violation) {
	var vs []apperr.Violation
	bad := func(name, format string, args ...any) {
		vs = append(vs, apperr.Violation{Field: "parameters." + name, Description: fmt.Sprintf(format, args...)})
	}
	byName := map[string]*opsconductorv1.Parameter{}
	for _, p := range defs {
		byName[p.GetName()] = p
	}
	for name := range given {
		if byName[name] == nil {
			known := make([]string, 0, len(defs))
			for _, p := range defs {
				known = append(known, p.GetName())
			}
			bad(name, "not a parameter of this job (it has %v)", known)
		}
	}
	values := map[string]string{}
	var secrets []string
	for _, p := range defs {
		v, ok := given[p.GetName()]
		switch {
		case !ok && p.GetRequired():
			bad(p.GetName(), "is required (%s)", typeOf(p))
			continue
		case !ok:
			v = p.GetDefault()
		}
		if why := check(p, v); why != "" && (ok || v != "") {
			bad(p.GetName(), "%s", why)
			continue
		}
		values[p.GetName()] = v
		if p.GetSecret() {
			secrets = append(secrets, p.GetName())
		}
	}
	return values, secrets, vs
}

// Render returns a copy of job whose actions' command and script have
// their {{ .params.NAME }} references filled in (secret values as Mask),
// for checks that must see what will run. A field that does not render is
// left as written.
func Render(job *opsconductorv1.Job, values map[string]string, secrets []string) *opsconductorv1.Job {
	shown := map[string]string{}
	for k, v := range values {
		shown[k] = v
		if slices.Contains(secrets, k) {
			shown[k] = Mask
		}
	}
	data := map[string]any{"params": shown}
	out := proto.Clone(job).(*opsconductorv1.Job)
	for _, a := range out.GetActions() {
		for _, field := range []*string{&a.Command, &a.Script} {
			if !strings.Contains(*field, "{{") {
				continue
			}
			t, err := template.New("action").Option("missingkey=error").Parse(*field)
			if err != nil {
				continue
			}
			var sb strings.Builder
			if t.Execute(&sb, data) == nil {
				*field = sb.String()
			}
		}
	}
	return out
}
