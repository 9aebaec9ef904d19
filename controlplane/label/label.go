// Package label parses and matches label selectors such as
// "role=web,env=prod": every key=value pair must match an agent's (or a
// job's) labels.
package label

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Selector is a parsed label selector. The zero value matches everything.
type Selector []Requirement

// Requirement is one key=value pair of a selector.
type Requirement struct {
	Key   string
	Value string
}

var (
	keyPattern   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62}[A-Za-z0-9])?$`)
	valuePattern = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$`)
)

// ParseSelector parses "k=v,k2=v2". An empty string is the empty selector.
// Whitespace around pairs is ignored; a key may appear once.
func ParseSelector(s string) (Selector, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var sel Selector
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		key, value, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not key=value", part)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if err := ValidateKey(key); err != nil {
			return nil, err
		}
		if err := ValidateValue(value); err != nil {
			return nil, err
		}
		if seen[key] {
			return nil, fmt.Errorf("key %q appears twice", key)
		}
		seen[key] = true
		sel = append(sel, Requirement{Key: key, Value: value})
	}
	return sel, nil
}

// ValidatePair checks a label's key, then its value.
func ValidatePair(key, value string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	return ValidateValue(value)
}

// ValidateKey checks a label key: 1-64 characters of letters, digits, '.',
// '_', '-' and '/', starting and ending with a letter or digit.
func ValidateKey(key string) error {
	if !keyPattern.MatchString(key) {
		return fmt.Errorf("label key %q must be 1-64 letters, digits, '.', '_', '-' or '/', starting and ending with a letter or digit", key)
	}
	return nil
}

// ValidateValue checks a label value: empty, or up to 63 letters, digits,
// '.', '_' and '-', starting and ending with a letter or digit.
func ValidateValue(value string) error {
	if !valuePattern.MatchString(value) {
		return fmt.Errorf("label value %q must be up to 63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit", value)
	}
	return nil
}

// Matches reports whether labels satisfy every requirement.
func (s Selector) Matches(labels map[string]string) bool {
	for _, r := range s {
		v, ok := labels[r.Key]
		if !ok || v != r.Value {
			return false
		}
	}
	return true
}

// String renders the selector in canonical (sorted) form.
func (s Selector) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		parts[i] = r.Key + "=" + r.Value
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
