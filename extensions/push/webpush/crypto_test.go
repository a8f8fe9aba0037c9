package webpush

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/push/webpush/webpushtest"
)

func unb64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEncryptRFC8291 reproduces the example of RFC 8291 section 5 byte
// for byte: with the RFC's application server key pair and salt, the
// body is the RFC's.
func TestEncryptRFC8291(t *testing.T) {
	as, err := ecdh.P256().NewPrivateKey(unb64(t, "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"))
	if err != nil {
		t.Fatal(err)
	}
	if got := base64.RawURLEncoding.EncodeToString(as.PublicKey().Bytes()); got != "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8" {
		t.Fatalf("as_public %s", got)
	}
	ua, err := ecdh.P256().NewPublicKey(unb64(t, "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := encrypt([]byte("When I grow up, I want to be a watermelon"), 0, ua, unb64(t, "BTBZMqHH6r4Tts7J_aSIgg"), as, unb64(t, "DGv6ra1nlYgDCS1FRnbzlw"))
	if err != nil {
		t.Fatal(err)
	}
	const want = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml" +
		"mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT" +
		"pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
	if got := base64.RawURLEncoding.EncodeToString(body); got != want {
		t.Fatalf("body\n got %s\nwant %s", got, want)
	}
}

// TestEncryptPadding: what encrypt pads, the receiving side (decrypting
// independently) unpads, up to the largest plaintext a push carries.
func TestEncryptPadding(t *testing.T) {
	ua, _ := ecdh.P256().GenerateKey(rand.Reader)
	auth := make([]byte, 16)
	rand.Read(auth)
	for _, tc := range []struct{ n, pad int }{{0, 0}, {1, 127}, {100, 28}, {MaxPlaintext - 5, 5}, {MaxPlaintext, 0}} {
		as, _ := ecdh.P256().GenerateKey(rand.Reader)
		salt := make([]byte, 16)
		rand.Read(salt)
		plain := []byte(strings.Repeat("x", tc.n))
		body, err := encrypt(plain, tc.pad, ua.PublicKey(), auth, as, salt)
		if err != nil {
			t.Fatal(err)
		}
		if len(body) != headerLen+tc.n+tc.pad+1+tagLen || len(body) > 4096 {
			t.Fatalf("%d+%d: body of %d bytes", tc.n, tc.pad, len(body))
		}
		got, err := webpushtest.Decrypt(body, ua, auth)
		if err != nil || string(got) != string(plain) {
			t.Fatalf("%d+%d: %v, %d bytes back", tc.n, tc.pad, err, len(got))
		}
	}
	as, _ := ecdh.P256().GenerateKey(rand.Reader)
	if _, err := encrypt(make([]byte, MaxPlaintext), 1, ua.PublicKey(), auth, as, make([]byte, 16)); err != errTooLong {
		t.Fatalf("over 4096 bytes: %v", err)
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, KeyFileName)
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equal(k2) {
		t.Fatal("a second start made another key")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("files left in the directory: %v", ents)
	}

	// Readable by others: refused, never used.
	os.Chmod(path, 0o644)
	if _, err := LoadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key: %v", err)
	}
	os.Chmod(path, 0o600)

	// A SEC 1 key as openssl writes it.
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(ec)
	sec1 := filepath.Join(dir, "sec1.pem")
	os.WriteFile(sec1, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	if k, err := LoadOrCreateKey(sec1); err != nil || !k.Equal(ec) {
		t.Fatalf("SEC 1 key: %v", err)
	}

	for name, content := range map[string]string{
		"garbage.pem": "not a key",
		"cert.pem":    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
		"p384.pem":    string(p384PEM(t)),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		if _, err := LoadOrCreateKey(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := LoadOrCreateKey(filepath.Join(dir, "nosuchdir", KeyFileName)); err == nil {
		t.Error("a key made in a missing directory")
	}
}

func p384PEM(t *testing.T) []byte {
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// TestVAPIDToken: the Authorization header verifies with the published
// key, for the endpoint's origin, within RFC 8292's 24 hours.
func TestVAPIDToken(t *testing.T) {
	key, err := LoadOrCreateKey(filepath.Join(t.TempDir(), KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	pub := base64.RawURLEncoding.EncodeToString(publicKeyBytes(key))
	now := time.Now()
	h, err := vapidAuthorization(key, pub, "https://push.example.net:8443", "mailto:ops@example.org", now)
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := webpushtest.VerifyVAPID(h, "https://push.example.net:8443", now)
	if err != nil {
		t.Fatal(err)
	}
	if k != pub || c.Sub != "mailto:ops@example.org" || c.Exp != now.Add(12*time.Hour).Unix() {
		t.Fatalf("claims %+v, k %s", c, k)
	}
	if _, _, err := webpushtest.VerifyVAPID(h, "https://push.example.net", now); err == nil {
		t.Fatal("verified for another origin")
	}
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
