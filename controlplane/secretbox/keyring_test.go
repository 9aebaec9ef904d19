package secretbox

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestKeyringRotation(t *testing.T) {
	k1 := "k1:" + base64.StdEncoding.EncodeToString(NewKey())
	k2 := "k2:" + base64.StdEncoding.EncodeToString(NewKey())
	old, err := ParseKeyring(k1)
	if err != nil {
		t.Fatal(err)
	}
	id, sealed := old.Seal("s3cret", "credential/a")
	if id != "k1" || strings.Contains(sealed, "s3cret") {
		t.Fatalf("sealed with %q: %q", id, sealed)
	}
	rotated, err := ParseKeyring(k2 + "," + k1)
	if err != nil {
		t.Fatal(err)
	}
	if rotated.Current() != "k2" {
		t.Fatalf("current = %q, want the first key", rotated.Current())
	}
	if plain, err := rotated.Open(id, sealed, "credential/a"); err != nil || plain != "s3cret" {
		t.Fatalf("open after rotation = %q, %v", plain, err)
	}
	if _, err := rotated.Open(id, sealed, "credential/b"); !errors.Is(err, ErrOpen) {
		t.Fatalf("a value moved to another label opened: %v", err)
	}
	only2, _ := ParseKeyring(k2)
	if _, err := only2.Open(id, sealed, "credential/a"); !errors.Is(err, ErrOpen) || !strings.Contains(err.Error(), `"k1"`) {
		t.Fatalf("open with the retired key missing = %v", err)
	}
	for _, bad := range []string{"", "nokey", "k1:notbase64!", "k1:" + base64.StdEncoding.EncodeToString([]byte("short")), k1 + "," + k1, "bad id:" + base64.StdEncoding.EncodeToString(NewKey())} {
		if _, err := ParseKeyring(bad); err == nil {
			t.Errorf("ParseKeyring(%q) accepted", bad)
		} else if strings.Contains(err.Error(), strings.TrimPrefix(bad, "k1:")) && len(bad) > 10 && !strings.Contains(bad, ",") {
			t.Errorf("error %q repeats the key material", err)
		}
	}
}
