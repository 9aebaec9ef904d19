// Package transport builds the HTTP clients that talk to the control plane:
// HTTPS verified against a CA bundle or a pinned certificate fingerprint,
// optionally with a client certificate (mutual TLS), HTTP/2 when offered.
// The agent and the operator CLI share it.
package transport

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"
)

// Options say how to trust the server and how to present ourselves.
type Options struct {
	// CAFile is a PEM bundle the server certificate must chain to
	// (default: the system roots).
	CAFile string
	// PinSHA256 is the hex SHA-256 of the server's leaf certificate (colons
	// allowed). When set it replaces chain and name verification: only
	// that exact certificate is accepted.
	PinSHA256 string
	// ClientCert and ClientKey are PEM files presented for mutual TLS.
	ClientCert string
	ClientKey  string
}

// NewHTTPClient returns a client for the control plane. It has no overall
// timeout: callers bound each call with a context (long-polls last long).
func NewHTTPClient(opts Options) (*http.Client, error) {
	cfg, err := TLSConfig(opts)
	if err != nil {
		return nil, err
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = cfg
	t.ForceAttemptHTTP2 = true
	t.TLSHandshakeTimeout = 15 * time.Second
	return &http.Client{Transport: t}, nil
}

// TLSConfig builds the client TLS configuration for opts.
func TLSConfig(opts Options) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA bundle %s holds no PEM certificate", opts.CAFile)
		}
		cfg.RootCAs = pool
	}
	if opts.PinSHA256 != "" {
		want, err := hex.DecodeString(strings.ReplaceAll(strings.ToLower(opts.PinSHA256), ":", ""))
		if err != nil || len(want) != sha256.Size {
			return nil, errors.New("pinned fingerprint must be the hex SHA-256 of the server certificate (64 hex digits, colons allowed)")
		}
		// Pinning replaces the chain check: the one certificate we pinned
		// is the one we accept, whoever signed it.
		cfg.InsecureSkipVerify = true
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("server sent no certificate")
			}
			got := sha256.Sum256(raw[0])
			if !equal(got[:], want) {
				return fmt.Errorf("server certificate fingerprint %s does not match the pinned one", hex.EncodeToString(got[:]))
			}
			return nil
		}
	}
	if (opts.ClientCert == "") != (opts.ClientKey == "") {
		return nil, errors.New("client certificate and key go together")
	}
	if opts.ClientCert != "" {
		pair, err := tls.LoadX509KeyPair(opts.ClientCert, opts.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func equal(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	var diff byte
	for i := range a {
		diff |= a[i] ^ b[i]
	}
	return diff == 0
}

// Fingerprint returns the hex SHA-256 of a PEM certificate's first
// certificate, the value to pin.
func Fingerprint(certPEM []byte) (string, error) {
	for {
		var block *pem.Block
		block, certPEM = pem.Decode(certPEM)
		if block == nil {
			return "", errors.New("no certificate in PEM data")
		}
		if block.Type == "CERTIFICATE" {
			sum := sha256.Sum256(block.Bytes)
			return hex.EncodeToString(sum[:]), nil
		}
	}
}
