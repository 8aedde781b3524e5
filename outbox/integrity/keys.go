package integrity

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Signer signs checkpoints with an Ed25519 private key.
type Signer struct {
	key ed25519.PrivateKey
	pub ed25519.PublicKey
	id  string
}

// NewSigner wraps key.
func NewSigner(key ed25519.PrivateKey) *Signer {
	pub := key.Public().(ed25519.PublicKey)
	return &Signer{key: key, pub: pub, id: KeyID(pub)}
}

// PublicKey returns the key that verifies this signer's signatures.
func (s *Signer) PublicKey() ed25519.PublicKey { return s.pub }

// KeyID returns the id of the signer's public key ([KeyID]).
func (s *Signer) KeyID() string { return s.id }

// Sign signs msg.
func (s *Signer) Sign(msg []byte) []byte { return ed25519.Sign(s.key, msg) }

// KeyID names a public key: the first 16 hex digits of the SHA-256 of its
// 32 raw bytes.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// EncodePublicKey renders pub as standard base64 of its 32 raw bytes, the
// form --public-key and GET /v1/checkpoints use.
func EncodePublicKey(pub ed25519.PublicKey) string {
	return base64.StdEncoding.EncodeToString(pub)
}

const (
	pemPrivateKey = "PRIVATE KEY"
	pemPublicKey  = "PUBLIC KEY"
)

// GenerateKeyFile creates a new Ed25519 key, writes it to path as a PKCS #8
// PEM file readable by its owner only, and writes the public key next to it
// (path + ".pub", PKIX PEM). It refuses to overwrite an existing file: a
// lost signing key would make old checkpoints unverifiable by nobody, but a
// replaced one silently changes the key auditors hold.
func GenerateKeyFile(path string) (*Signer, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating an Ed25519 key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding the public key: %w", err)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating the key's directory: %w", err)
		}
	}
	if err := writeNew(path, pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := writeNew(path+".pub", pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: pubDER}), 0o644); err != nil {
		return nil, err
	}
	return NewSigner(key), nil
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("creating key file: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing key file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing key file %s: %w", path, err)
	}
	return nil
}

// LoadSigner reads a private key file written by [GenerateKeyFile] (PKCS #8
// PEM holding an Ed25519 key).
func LoadSigner(path string) (*Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading signing key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != pemPrivateKey {
		return nil, fmt.Errorf("reading signing key %s: not a PEM %q block (create one with `auditlog integrity keygen`)", path, pemPrivateKey)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("reading signing key %s: %w", path, err)
	}
	key, ok := parsed.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("reading signing key %s: a %T, not an Ed25519 key", path, parsed)
	}
	return NewSigner(key), nil
}

// ParsePublicKey reads a public key given as standard base64 of its 32 raw
// bytes, or as the path of a PKIX PEM file (the .pub file keygen writes).
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	if raw, err := base64.StdEncoding.DecodeString(s); err == nil {
		if len(raw) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("public key: %d bytes, want %d", len(raw), ed25519.PublicKeySize)
		}
		return ed25519.PublicKey(raw), nil
	}
	data, err := os.ReadFile(s)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("public key: %q is neither base64 of 32 bytes nor a file", s)
		}
		return nil, fmt.Errorf("reading public key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		// A file holding the base64 form.
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
		if err != nil || len(raw) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("public key %s: neither PEM nor base64 of 32 bytes", s)
		}
		return ed25519.PublicKey(raw), nil
	}
	if block.Type != pemPublicKey {
		return nil, fmt.Errorf("public key %s: a PEM %q block, want %q", s, block.Type, pemPublicKey)
	}
	parsed, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public key %s: %w", s, err)
	}
	pub, ok := parsed.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("public key %s: a %T, not an Ed25519 key", s, parsed)
	}
	return pub, nil
}
