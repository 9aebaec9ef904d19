package params

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/opsconductor/opsconductor/controlplane/secretbox"
)

// stored is how an execution keeps its values: secret ones sealed.
type stored struct {
	Plain  map[string]string `json:"plain,omitempty"`
	Sealed map[string]string `json:"sealed,omitempty"`
}

func label(executionID, name string) string { return executionID + "/" + name }

// Seal encodes an execution's values for storage, sealing the secret ones.
func Seal(box *secretbox.Box, executionID string, values map[string]string, secrets []string) ([]byte, error) {
	s := stored{Plain: map[string]string{}, Sealed: map[string]string{}}
	for name, v := range values {
		if slices.Contains(secrets, name) {
			s.Sealed[name] = box.Seal(v, label(executionID, name))
		} else {
			s.Plain[name] = v
		}
	}
	return json.Marshal(s)
}

// Open decodes stored values, opening the sealed ones; it returns every
// value and the secret values (to mask).
func Open(box *secretbox.Box, executionID string, raw []byte) (map[string]string, []string, error) {
	var s stored
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, nil, fmt.Errorf("decode parameters: %w", err)
		}
	}
	values := map[string]string{}
	for k, v := range s.Plain {
		values[k] = v
	}
	var secrets []string
	for k, sealed := range s.Sealed {
		v, err := box.Open(sealed, label(executionID, k))
		if err != nil {
			return nil, nil, fmt.Errorf("secret parameter %s: %w (was the server's --secret-key changed?)", k, err)
		}
		values[k] = v
		if v != "" {
			secrets = append(secrets, v)
		}
	}
	return values, secrets, nil
}

// Display returns the values to show: secret ones masked.
func Display(raw []byte) map[string]string {
	var s stored
	_ = json.Unmarshal(raw, &s)
	out := map[string]string{}
	for k, v := range s.Plain {
		out[k] = v
	}
	for k := range s.Sealed {
		out[k] = Mask
	}
	return out
}
