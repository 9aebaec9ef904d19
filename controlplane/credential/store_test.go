package credential

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

func TestStoreContract(t *testing.T) {
	for _, d := range storetest.Dialects() {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			st := NewStore(storetest.Open(t, d, Schema, Migrations()))
			now := time.Now().UTC().Truncate(time.Microsecond)
			r := Record{Name: "lab", Kind: KindPassword, Hosts: []string{"10.*"}, KeyID: "k1", Sealed: "s1", CreatedBy: "admin", CreatedAt: now, UpdatedAt: now}
			if err := st.Create(ctx, r); err != nil {
				t.Fatal(err)
			}
			if err := st.Create(ctx, r); !errors.Is(err, store.ErrConflict) {
				t.Fatalf("duplicate create: %v", err)
			}
			got, err := st.Get(ctx, "lab")
			if err != nil || got.KeyID != "k1" || got.Sealed != "s1" || len(got.Hosts) != 1 || !got.CreatedAt.Equal(now) {
				t.Fatalf("get = %+v, %v", got, err)
			}
			r.Description, r.Hosts = "lab hosts", nil
			if err := st.Update(ctx, r, "admin"); err != nil {
				t.Fatal(err)
			}
			if err := st.Update(ctx, Record{Name: "nope"}, "admin"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("update missing: %v", err)
			}
			if ok, err := st.Reseal(ctx, "lab", "stale", "k2", "s2"); err != nil || ok {
				t.Fatalf("reseal from a stale value = %v, %v", ok, err)
			}
			if ok, err := st.Reseal(ctx, "lab", "s1", "k2", "s2"); err != nil || !ok {
				t.Fatalf("reseal = %v, %v", ok, err)
			}
			list, err := st.List(ctx)
			if err != nil || len(list) != 1 || list[0].KeyID != "k2" || list[0].Description != "lab hosts" || len(list[0].Hosts) != 0 {
				t.Fatalf("list = %+v, %v", list, err)
			}
			if err := st.Delete(ctx, "lab", "admin"); err != nil {
				t.Fatal(err)
			}
			if err := st.Delete(ctx, "lab", "admin"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("delete twice: %v", err)
			}
			if _, err := st.Get(ctx, "lab"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("get deleted: %v", err)
			}
		})
	}
}

func TestHostAllowed(t *testing.T) {
	tests := []struct {
		patterns []string
		address  string
		want     bool
	}{
		{nil, "anything", true},
		{[]string{"10.1.*.*"}, "10.1.2.3", true},
		{[]string{"10.1.*.*"}, "10.2.0.1", false},
		{[]string{"10.1.*"}, "10.1.evil", true},
		{[]string{"10.1.*.*"}, "10.1.evil.com", true},
		{[]string{"10.1.0.0/16"}, "10.1.evil.com", false},
		{[]string{"10.1.0.0/16"}, "10.1.200.3", true},
		{[]string{"10.1.0.0/16"}, "10.2.0.3", false},
		{[]string{"10.1.*"}, "10.1.2.3", false},
		{[]string{"*.lab.example.com"}, "a.b.lab.example.com", false},
		{[]string{"*.lab.example.com"}, "DB1.lab.example.com", true},
		{[]string{"*.lab.example.com"}, "lab.example.com.evil", false},
		{[]string{"a", "b"}, "b", true},
	}
	for _, tt := range tests {
		if got := HostAllowed(tt.patterns, tt.address); got != tt.want {
			t.Errorf("HostAllowed(%v, %q) = %v, want %v", tt.patterns, tt.address, got, tt.want)
		}
	}
}

func TestCheckUse(t *testing.T) {
	for _, tt := range []struct {
		transport string
		spec      map[string]string
		ok        bool
	}{
		{"ssh", map[string]string{"known_hosts": "/k"}, true},
		{"ssh", map[string]string{"proxy_jump": "bastion"}, false},
		{"ssh", map[string]string{"host_key_policy": "tofu"}, false},
		{"winrm", map[string]string{"https": "true"}, true},
		{"winrm", map[string]string{"auth": "ntlm"}, true},
		{"winrm", map[string]string{}, false},
		{"winrm", map[string]string{"https": "true", "insecure_skip_verify": "true"}, false},
	} {
		if err := CheckUse("c", tt.transport, tt.spec); (err == nil) != tt.ok {
			t.Errorf("CheckUse(%s, %v) = %v, want ok=%v", tt.transport, tt.spec, err, tt.ok)
		}
	}
}
