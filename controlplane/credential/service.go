// Package credential keeps the secrets jump agents log in to remote hosts
// with: SSH private keys and passwords, sealed at rest with AES-256-GCM
// under a key ring (the key id is stored with each value, so keys rotate),
// written through the API and never read back. The agent gateway opens a
// value only to put it in the task of the agent that leased it.
package credential

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	"github.com/opsconductor/opsconductor/controlplane/secretbox"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

// Kinds of credential.
const (
	KindSSHKey   = "ssh_key"
	KindPassword = "password"
)

// Limits of a credential.
const (
	MaxValueBytes = 64 << 10
	MaxHosts      = 100
)

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidName reports whether name can name a credential.
func ValidName(name string) bool { return namePattern.MatchString(name) }

// Secret is an opened credential, for the agent gateway only.
type Secret struct {
	Kind  string
	Value string
}

// Service implements opsconductorv1connect.CredentialServiceHandler.
type Service struct {
	store  *Store
	keys   *secretbox.Keyring // nil: no key configured, credentials refused
	logger *zap.Logger
}

var _ opsconductorv1connect.CredentialServiceHandler = (*Service)(nil)

// NewService builds the service; keys may be nil (then every write and
// every use of a credential is refused, saying which setting is missing).
func NewService(st *Store, keys *secretbox.Keyring, logger *zap.Logger) *Service {
	return &Service{store: st, keys: keys, logger: logger.Named("credential")}
}

var errNoKeys = apperr.FailedPrecondition("no credential key is configured: set --credential-keys (OPSCONDUCTOR_CREDENTIAL_KEYS or its _FILE variant) to id:base64-of-32-bytes")

// label binds a sealed value to its credential's name.
func label(name string) string { return "credential/" + name }

func toProto(r Record) *opsconductorv1.Credential {
	return &opsconductorv1.Credential{Name: r.Name, Kind: r.Kind, Description: r.Description, Hosts: r.Hosts, KeyId: r.KeyID,
		CreatedBy: r.CreatedBy, CreateTime: timestamppb.New(r.CreatedAt), UpdateTime: timestamppb.New(r.UpdatedAt)}
}

// validate checks a credential's fields and, when value is set, that it
// fits the kind. Violations name fields under prefix.
func validate(c *opsconductorv1.Credential, value string, valueRequired bool) []apperr.Violation {
	var vs []apperr.Violation
	add := func(field, format string, args ...any) {
		vs = append(vs, apperr.Violation{Field: field, Description: fmt.Sprintf(format, args...)})
	}
	if c == nil {
		add("credential", "is required")
		return vs
	}
	if !ValidName(c.GetName()) {
		add("credential.name", "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, got %q", c.GetName())
	}
	if k := c.GetKind(); k != KindSSHKey && k != KindPassword {
		add("credential.kind", "must be %s or %s, got %q", KindSSHKey, KindPassword, k)
	}
	if len(c.GetDescription()) > 4096 {
		add("credential.description", "must be at most 4096 characters")
	}
	if len(c.GetHosts()) > MaxHosts {
		add("credential.hosts", "must list at most %d patterns", MaxHosts)
	}
	for i, h := range c.GetHosts() {
		_, _, cidrErr := net.ParseCIDR(h)
		if _, err := path.Match(h, ""); (err != nil || h == "") && cidrErr != nil {
			add(fmt.Sprintf("credential.hosts[%d]", i), "must be a CIDR block such as 10.1.0.0/16 or a host pattern such as *.lab.example.com, got %q", h)
		}
	}
	switch {
	case value == "" && valueRequired:
		add("value", "must not be empty")
	case len(value) > MaxValueBytes:
		add("value", "must be at most %d bytes", MaxValueBytes)
	case value != "" && c.GetKind() == KindSSHKey:
		// Never echo the value or the parser's view of it.
		var missing *ssh.PassphraseMissingError
		if _, err := ssh.ParseRawPrivateKey([]byte(value)); errors.As(err, &missing) {
			add("value", "is a passphrase-protected key: store it without a passphrase (it is sealed at rest)")
		} else if err != nil {
			add("value", "is not a PEM or OpenSSH private key")
		}
	}
	return vs
}

func (s *Service) CreateCredential(ctx context.Context, req *connect.Request[opsconductorv1.CreateCredentialRequest]) (*connect.Response[opsconductorv1.CreateCredentialResponse], error) {
	c := req.Msg.GetCredential()
	if vs := validate(c, req.Msg.GetValue(), true); len(vs) > 0 {
		return nil, apperr.Invalid("credential", vs)
	}
	if s.keys == nil {
		return nil, errNoKeys
	}
	principal, _ := auth.PrincipalFrom(ctx)
	now := time.Now().UTC().Truncate(time.Microsecond)
	keyID, sealed := s.keys.Seal(req.Msg.GetValue(), label(c.GetName()))
	r := Record{Name: c.GetName(), Kind: c.GetKind(), Description: c.GetDescription(), Hosts: c.GetHosts(), KeyID: keyID, Sealed: sealed,
		CreatedBy: principal.Name, CreatedAt: now, UpdatedAt: now}
	if err := s.store.Create(ctx, r); errors.Is(err, store.ErrConflict) {
		return nil, apperr.AlreadyExists("a credential named %q already exists", c.GetName())
	} else if err != nil {
		return nil, err
	}
	s.logger.Info("credential created", zap.String("name", r.Name), zap.String("kind", r.Kind), zap.String("key_id", keyID), zap.String("by", principal.Name))
	return connect.NewResponse(&opsconductorv1.CreateCredentialResponse{Credential: toProto(r)}), nil
}

func (s *Service) ListCredentials(ctx context.Context, _ *connect.Request[opsconductorv1.ListCredentialsRequest]) (*connect.Response[opsconductorv1.ListCredentialsResponse], error) {
	rs, err := s.store.List(ctx)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListCredentialsResponse{}
	for _, r := range rs {
		resp.Credentials = append(resp.Credentials, toProto(r))
	}
	return connect.NewResponse(resp), nil
}

func (s *Service) get(ctx context.Context, name string) (Record, error) {
	if name == "" {
		return Record{}, apperr.InvalidField("name", "must not be empty")
	}
	r, err := s.store.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return Record{}, apperr.NotFound("credential %q not found", name)
	}
	return r, err
}

func (s *Service) GetCredential(ctx context.Context, req *connect.Request[opsconductorv1.GetCredentialRequest]) (*connect.Response[opsconductorv1.GetCredentialResponse], error) {
	r, err := s.get(ctx, req.Msg.GetName())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.GetCredentialResponse{Credential: toProto(r)}), nil
}

func (s *Service) UpdateCredential(ctx context.Context, req *connect.Request[opsconductorv1.UpdateCredentialRequest]) (*connect.Response[opsconductorv1.UpdateCredentialResponse], error) {
	c := req.Msg.GetCredential()
	if s.keys == nil {
		return nil, errNoKeys
	}
	r, err := s.get(ctx, c.GetName())
	if err != nil {
		return nil, err
	}
	value := req.Msg.GetValue()
	if value == "" {
		// The kind may only change with a new value that fits it.
		if c.GetKind() != r.Kind {
			return nil, apperr.InvalidField("value", "is required to change the kind from %s to %s", r.Kind, c.GetKind())
		}
	}
	if vs := validate(c, value, false); len(vs) > 0 {
		return nil, apperr.Invalid("credential", vs)
	}
	principal, _ := auth.PrincipalFrom(ctx)
	r.Kind, r.Description, r.Hosts = c.GetKind(), c.GetDescription(), c.GetHosts()
	r.UpdatedAt = time.Now().UTC().Truncate(time.Microsecond)
	if value != "" {
		r.KeyID, r.Sealed = s.keys.Seal(value, label(r.Name))
	}
	if err := s.store.Update(ctx, r, principal.Name); errors.Is(err, store.ErrNotFound) {
		return nil, apperr.NotFound("credential %q not found", r.Name)
	} else if err != nil {
		return nil, err
	}
	s.logger.Info("credential updated", zap.String("name", r.Name), zap.Bool("new_value", value != ""), zap.String("by", principal.Name))
	return connect.NewResponse(&opsconductorv1.UpdateCredentialResponse{Credential: toProto(r)}), nil
}

func (s *Service) DeleteCredential(ctx context.Context, req *connect.Request[opsconductorv1.DeleteCredentialRequest]) (*connect.Response[opsconductorv1.DeleteCredentialResponse], error) {
	if req.Msg.GetName() == "" {
		return nil, apperr.InvalidField("name", "must not be empty")
	}
	principal, _ := auth.PrincipalFrom(ctx)
	if err := s.store.Delete(ctx, req.Msg.GetName(), principal.Name); errors.Is(err, store.ErrNotFound) {
		return nil, apperr.NotFound("credential %q not found", req.Msg.GetName())
	} else if err != nil {
		return nil, err
	}
	s.logger.Info("credential deleted", zap.String("name", req.Msg.GetName()), zap.String("by", principal.Name))
	return connect.NewResponse(&opsconductorv1.DeleteCredentialResponse{}), nil
}

func (s *Service) RekeyCredentials(ctx context.Context, _ *connect.Request[opsconductorv1.RekeyCredentialsRequest]) (*connect.Response[opsconductorv1.RekeyCredentialsResponse], error) {
	if s.keys == nil {
		return nil, errNoKeys
	}
	rs, err := s.store.List(ctx)
	if err != nil {
		return nil, err
	}
	n := int32(0)
	for _, r := range rs {
		if r.KeyID == s.keys.Current() {
			continue
		}
		plain, err := s.keys.Open(r.KeyID, r.Sealed, label(r.Name))
		if err != nil {
			return nil, apperr.FailedPrecondition("credential %q: %v (configure its key to rekey it)", r.Name, err)
		}
		keyID, sealed := s.keys.Seal(plain, label(r.Name))
		ok, err := s.store.Reseal(ctx, r.Name, r.Sealed, keyID, sealed)
		if err != nil {
			return nil, err
		}
		if ok {
			n++
		}
	}
	s.logger.Info("credentials resealed", zap.Int32("resealed", n), zap.String("key_id", s.keys.Current()))
	return connect.NewResponse(&opsconductorv1.RekeyCredentialsResponse{Resealed: n}), nil
}

// HostAllowed reports whether a credential restricted to patterns may be
// used for address. A pattern is a CIDR block (10.1.0.0/16: the address
// must be an IP in it) or a name pattern matched label by label (a "*"
// never spans a dot: 10.1.*.* and *.lab.example.com, never
// 10.1.evil.com for 10.1.*).
func HostAllowed(patterns []string, address string) bool {
	return len(patterns) == 0 || slices.ContainsFunc(patterns, func(p string) bool { return hostMatches(p, address) })
}

func hostMatches(pattern, address string) bool {
	if _, block, err := net.ParseCIDR(pattern); err == nil {
		ip := net.ParseIP(address)
		return ip != nil && block.Contains(ip)
	}
	pl := strings.Split(strings.ToLower(pattern), ".")
	al := strings.Split(strings.ToLower(address), ".")
	if len(pl) != len(al) {
		return false
	}
	for i := range pl {
		if ok, _ := path.Match(pl[i], al[i]); !ok {
			return false
		}
	}
	return true
}

// CheckUse refuses executor settings under which a stored credential could
// reach someone other than its host: a bastion in between (proxy_jump),
// a host key trusted on first sight, a certificate not checked, a WinRM
// password in clear over HTTP with Basic.
func CheckUse(name, transport string, spec map[string]string) error {
	refuse := func(why string) error {
		return apperr.FailedPrecondition("credential %q may not be used with %s", name, why)
	}
	switch {
	case spec["proxy_jump"] != "":
		return refuse("proxy_jump (the bastion would receive it)")
	case spec["host_key_policy"] == "tofu":
		return refuse("host_key_policy tofu (an unknown host would be trusted)")
	case spec["insecure_skip_verify"] == "true":
		return refuse("insecure_skip_verify (the host's certificate would not be checked)")
	case transport == "winrm" && spec["https"] != "true" && spec["auth"] != "ntlm":
		return refuse("winrm Basic authentication over plain HTTP (the password would cross the network in clear): set https or auth ntlm")
	}
	return nil
}

// Check tells whether credential name exists and may be used for address,
// as an error a caller can return (naming what is wrong, never a value).
func (s *Service) Check(ctx context.Context, name, address string) error {
	_, err := s.usable(ctx, name, address)
	return err
}

// usable reads credential name and checks it may be used for address.
func (s *Service) usable(ctx context.Context, name, address string) (Record, error) {
	r, err := s.store.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return Record{}, apperr.FailedPrecondition("credential %q does not exist", name)
	}
	if err != nil {
		return Record{}, err
	}
	if !HostAllowed(r.Hosts, address) {
		return Record{}, apperr.FailedPrecondition("credential %q may not be used for host %s (it is limited to %s)", name, address, strings.Join(r.Hosts, ", "))
	}
	return r, nil
}

// Open returns the value of credential name for use on address.
func (s *Service) Open(ctx context.Context, name, address string) (Secret, error) {
	if s.keys == nil {
		return Secret{}, errNoKeys
	}
	r, err := s.usable(ctx, name, address)
	if err != nil {
		return Secret{}, err
	}
	plain, err := s.keys.Open(r.KeyID, r.Sealed, label(r.Name))
	if err != nil {
		return Secret{}, fmt.Errorf("open credential %q: %w", name, err)
	}
	return Secret{Kind: r.Kind, Value: plain}, nil
}
