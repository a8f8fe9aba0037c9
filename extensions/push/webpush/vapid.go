package webpush

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// KeyFileName is the name of the VAPID key file in the data directory
// (SenderConfig.KeyFile is normally filepath.Join(dataDir, KeyFileName)).
const KeyFileName = "webpush-vapid.pem"

// jwtLifetime is how long a VAPID token is valid. RFC 8292 section 2
// allows at most 24 hours; half of that leaves room for a skewed clock at
// the push service.
const jwtLifetime = 12 * time.Hour

// LoadOrCreateKey returns the VAPID key pair kept in path, making one and
// writing it there (mode 0600) when the file does not exist. The key is
// the proxy's identity at every push service (RFC 8292): subscriptions a
// client made with its public key (GETVAPID) only accept pushes signed by
// it, so it must outlive restarts, and every node of a cluster must share
// the same file.
//
// The file is PEM: a PKCS #8 "PRIVATE KEY" (as written here) or a SEC 1
// "EC PRIVATE KEY" (openssl ecparam -name prime256v1 -genkey), on P-256.
// A file that others than its owner may read is refused, as ssh refuses
// such keys: anyone holding it can push to every subscriber.
func LoadOrCreateKey(path string) (*ecdsa.PrivateKey, error) {
	key, err := loadKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("webpush: generating the VAPID key: %w", err)
	}
	if err := writeKey(path, key); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Another process made it first: use theirs.
			return loadKey(path)
		}
		return nil, err
	}
	return key, nil
}

// CheckKeyFile returns the error LoadOrCreateKey would return for path,
// making nothing: nil when the file holds a key it takes, or does not
// exist (LoadOrCreateKey would make it). A reload (SIGHUP) checks the key
// with it, so that it refuses a file the next start would refuse.
func CheckKeyFile(path string) error {
	if _, err := loadKey(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func loadKey(path string) (*ecdsa.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("webpush: VAPID key file %s has mode %v: readable by others than its owner (chmod 600 it)", path, fi.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, 16<<10))
	if err != nil {
		return nil, fmt.Errorf("webpush: reading %s: %w", path, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("webpush: %s holds no PEM block", path)
	}
	var k any
	switch blk.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("webpush: %s holds a %q, not a private key", path, blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("webpush: %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("webpush: %s is not a P-256 key (VAPID signs with ES256)", path)
	}
	return ek, nil
}

// writeKey writes key to path, which must not exist yet: to a temporary
// file first, synced, then linked to its name, so that a crash never
// leaves a truncated key that the next start would refuse, and two
// processes starting at once never overwrite each other's key.
func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".webpush-vapid-*")
	if err != nil {
		return fmt.Errorf("webpush: writing the VAPID key: %w", err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600 already; say so for readers.
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := pem.Encode(tmp, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		tmp.Close()
		return fmt.Errorf("webpush: writing the VAPID key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		return fmt.Errorf("webpush: writing the VAPID key: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync() // the new name survives a crash
		d.Close()
	}
	return nil
}

// publicKeyBytes returns the uncompressed P-256 point of key, the form
// VAPID's k= parameter and GETVAPID carry.
func publicKeyBytes(key *ecdsa.PrivateKey) []byte {
	b, err := key.PublicKey.Bytes()
	if err != nil {
		panic(err) // a P-256 key always has one
	}
	return b
}

// origin returns the ASCII serialisation of the origin of an endpoint
// URL, the audience of its VAPID token (RFC 8292 section 2).
func origin(u *url.URL) string { return u.Scheme + "://" + u.Host }

// vapidAuthorization returns the Authorization header value for a push to
// a service at aud (an origin): "vapid t=<JWT>, k=<public key>" (RFC 8292
// section 3), the JWT signed with ES256 and valid until now+jwtLifetime.
func vapidAuthorization(key *ecdsa.PrivateKey, pub, aud, sub string, now time.Time) (string, error) {
	claims, err := json.Marshal(struct {
		Aud string `json:"aud"`
		Exp int64  `json:"exp"`
		Sub string `json:"sub,omitempty"`
	}{aud, now.Add(jwtLifetime).Unix(), sub})
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(`{"typ":"JWT","alg":"ES256"}`)) + "." + enc.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", fmt.Errorf("webpush: signing the VAPID token: %w", err)
	}
	// JWS (RFC 7518 section 3.4) wants R and S as two 32-byte big-endian
	// integers, not ASN.1.
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return "vapid t=" + signing + "." + enc.EncodeToString(sig) + ", k=" + pub, nil
}
