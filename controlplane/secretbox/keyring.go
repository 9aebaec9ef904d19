package secretbox

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
)

// Keyring holds several keys by id: the current one seals, any of them
// opens what it sealed, so keys can be rotated without losing data.
type Keyring struct {
	current string
	boxes   map[string]*Box
}

var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ParseKeyring reads "id:base64key,id2:base64key2": the first key is the
// current one (it seals); the others only open values sealed before a
// rotation.
func ParseKeyring(spec string) (*Keyring, error) {
	k := &Keyring{boxes: map[string]*Box{}}
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, enc, ok := strings.Cut(part, ":")
		if !ok || !keyIDPattern.MatchString(id) {
			return nil, fmt.Errorf("key %q: want id:base64-key with an id of letters, digits, '.', '_' or '-'", redact(part))
		}
		if _, dup := k.boxes[id]; dup {
			return nil, fmt.Errorf("key id %q appears twice", id)
		}
		raw, err := base64.StdEncoding.DecodeString(enc)
		if err != nil || len(raw) != 32 {
			return nil, fmt.Errorf("key %q: must be the base64 of 32 bytes (openssl rand -base64 32)", id)
		}
		box, err := New(raw)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", id, err)
		}
		k.boxes[id] = box
		if k.current == "" {
			k.current = id
		}
	}
	if k.current == "" {
		return nil, fmt.Errorf("no key given")
	}
	return k, nil
}

// redact keeps a malformed key entry's id and hides the rest; an entry
// without an id may be the key itself, so none of it is shown.
func redact(part string) string {
	id, _, ok := strings.Cut(part, ":")
	if !ok || len(id) > 64 {
		return "(an entry without an id)"
	}
	return id + ":…"
}

// Current is the id of the key that seals.
func (k *Keyring) Current() string { return k.current }

// Seal seals plain with the current key, bound to label, and returns the
// key id with the sealed value.
func (k *Keyring) Seal(plain, label string) (keyID, sealed string) {
	return k.current, k.boxes[k.current].Seal(plain, label)
}

// Open opens a value sealed with key keyID.
func (k *Keyring) Open(keyID, sealed, label string) (string, error) {
	box, ok := k.boxes[keyID]
	if !ok {
		return "", fmt.Errorf("sealed with key %q, which is not configured: %w", keyID, ErrOpen)
	}
	return box.Open(sealed, label)
}
