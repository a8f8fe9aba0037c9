package push

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/lemonproxy/lemonproxy/internal/secretfile"
)

// Sealed credentials: where the operator opts in (-push-credentials-key),
// the user's own login is kept so that the proxy can log in for a
// registered account while no session of it is connected. It is kept
// only in sealed form: AES-256-GCM under the operator's key, a fresh
// random 96-bit nonce per sealing, the account key as additional data (a
// sealed record copied into another account's records does not open).
// The plaintext is the user name and the password joined by a NUL (a user
// name holds none: the core refuses one at login). It is dropped when the
// upstream rejects it and removed with the account's last registration.

// KeySize is the size of the credentials key: AES-256.
const KeySize = 32

// ParseKey reads a credentials key from a key file's contents: 32 bytes
// as they are, or their base64 (standard or URL alphabet, padded or not)
// with surrounding white space. Both are accepted because `head -c 32
// /dev/urandom > FILE` and `openssl rand -base64 32 > FILE` are the two
// ways an operator makes one.
func ParseKey(data []byte) ([]byte, error) {
	if len(data) == KeySize {
		return append([]byte(nil), data...), nil
	}
	text := strings.TrimSpace(string(data))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(text); err == nil && len(k) == KeySize {
			return k, nil
		}
	}
	return nil, fmt.Errorf("push: a credentials key is %d bytes, raw or in base64 (head -c 32 /dev/urandom, or openssl rand -base64 32); this one is %d bytes and not base64 of %d", KeySize, len(data), KeySize)
}

// LoadKey reads the credentials key file at path (secretfile's checks:
// not readable by others) and parses it with ParseKey.
func LoadKey(path string) ([]byte, error) {
	data, err := secretfile.ReadBytes(path, "push: credentials key")
	if err != nil {
		return nil, err
	}
	return ParseKey(data)
}

// sealer seals and opens credentials.
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("push: credentials key of %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("push: credentials key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("push: credentials key: %w", err)
	}
	return &sealer{aead}, nil
}

// sealVersion is the first byte of a sealed record, so that a later
// format can be told apart.
const sealVersion = 1

// seal returns version || nonce || AES-GCM(user NUL pass) for account.
func (s *sealer) seal(account, user, pass string) ([]byte, error) {
	if strings.IndexByte(user, 0) >= 0 {
		return nil, errors.New("push: user name with NUL")
	}
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(user)+1+len(pass)+s.aead.Overhead())
	out[0] = sealVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("push: sealing credentials: %w", err)
	}
	plain := make([]byte, 0, len(user)+1+len(pass))
	plain = append(append(append(plain, user...), 0), pass...)
	out = s.aead.Seal(out, out[1:], plain, []byte(account))
	clear(plain)
	return out, nil
}

// errSealed marks a sealed record that does not open: another key, another
// account, damage.
var errSealed = errors.New("push: sealed credentials do not open (another key, or damaged)")

// open returns the user name and password sealed for account.
func (s *sealer) open(account string, sealed []byte) (user, pass string, err error) {
	n := s.aead.NonceSize()
	if len(sealed) < 1+n+s.aead.Overhead() || sealed[0] != sealVersion {
		return "", "", errSealed
	}
	plain, err := s.aead.Open(nil, sealed[1:1+n], sealed[1+n:], []byte(account))
	if err != nil {
		return "", "", errSealed
	}
	u, p, ok := strings.Cut(string(plain), "\x00")
	clear(plain)
	if !ok {
		return "", "", errSealed
	}
	return u, p, nil
}
