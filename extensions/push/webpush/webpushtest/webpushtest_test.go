package webpushtest

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func b64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The example of RFC 8291 section 5 (its intermediate values are in
// Appendix A): the user agent's private key decrypts the RFC's body.
const (
	rfcPlaintext = "When I grow up, I want to be a watermelon"
	rfcUAPrivate = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
	rfcUAPublic  = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
	rfcAuth      = "BTBZMqHH6r4Tts7J_aSIgg"
	rfcBody      = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml" +
		"mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT" +
		"pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
)

func TestDecryptRFC8291(t *testing.T) {
	key, err := ecdh.P256().NewPrivateKey(b64(t, rfcUAPrivate))
	if err != nil {
		t.Fatal(err)
	}
	if got := base64.RawURLEncoding.EncodeToString(key.PublicKey().Bytes()); got != rfcUAPublic {
		t.Fatalf("public key %s", got)
	}
	body := b64(t, rfcBody)
	plain, err := Decrypt(body, key, b64(t, rfcAuth))
	if err != nil {
		t.Fatal(err)
	}
	if string(plain) != rfcPlaintext {
		t.Fatalf("plaintext %q", plain)
	}
	// Any change is caught: a flipped bit of the ciphertext, another
	// secret, another key.
	body[len(body)-1] ^= 1
	if _, err := Decrypt(body, key, b64(t, rfcAuth)); err == nil {
		t.Fatal("a changed body decrypted")
	}
	body[len(body)-1] ^= 1
	if _, err := Decrypt(body, key, make([]byte, 16)); err == nil {
		t.Fatal("decrypted with another auth secret")
	}
	other, _ := ecdh.P256().GenerateKey(rand.Reader)
	if _, err := Decrypt(body, other, b64(t, rfcAuth)); err == nil {
		t.Fatal("decrypted with another key")
	}
}

// RFC 8188 section 3.1: one record, the key given directly.
func TestDecodeContentRFC8188(t *testing.T) {
	plain, err := DecodeContent(b64(t, "I1BsxtFttlv3u_Oo94xnmwAAEAAA-NAVub2qFgBEuQKRapoZu-IxkIva3MEB1PD-ly8Thjg"), b64(t, "yqdlZ-tYemfogSmv7Ws5PQ"))
	if err != nil {
		t.Fatal(err)
	}
	if string(plain) != "I am the walrus" {
		t.Fatalf("plaintext %q", plain)
	}
}

// RFC 8188 section 3.2: two records of rs 25, the second the last, and
// the key ID "a1".
func TestDecodeContentRFC8188Records(t *testing.T) {
	plain, err := DecodeContent(b64(t, "uNCkWiNYzKTnBN9ji3-qWAAAABkCYTHOG8chz_gnvgOqdGYovxyjuqRyJFjEDyoF1Fvkj6hQPdPHI51OEUKEpgz3SsLWIqS_uA"), b64(t, "BO3ZVPxUlnLORbVGMpbT1Q"))
	if err != nil {
		t.Fatal(err)
	}
	if string(plain) != "I am the walrus" {
		t.Fatalf("plaintext %q", plain)
	}
}

// token signs claims as a sender would, for VerifyVAPID's tests.
func token(t *testing.T, key *ecdsa.PrivateKey, header string, claims any) string {
	t.Helper()
	enc := base64.RawURLEncoding
	cb, _ := json.Marshal(claims)
	in := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString(cb)
	d := sha256.Sum256([]byte(in))
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return in + "." + enc.EncodeToString(sig)
}

func TestVerifyVAPID(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pb, _ := key.PublicKey.Bytes()
	k := base64.RawURLEncoding.EncodeToString(pb)
	now := time.Unix(1_700_000_000, 0)
	const origin = "https://push.example.net"
	hdr := `{"typ":"JWT","alg":"ES256"}`
	good := Claims{Aud: origin, Exp: now.Add(12 * time.Hour).Unix(), Sub: "mailto:push@example.com"}
	c, gotK, err := VerifyVAPID("vapid t="+token(t, key, hdr, good)+", k="+k, origin, now)
	if err != nil || c != good || gotK != k {
		t.Fatalf("good token: %v %+v %s", err, c, gotK)
	}
	for _, tc := range []struct {
		name, header string
	}{
		{"wrong aud", "vapid t=" + token(t, key, hdr, Claims{Aud: "https://other.example", Exp: good.Exp, Sub: good.Sub}) + ", k=" + k},
		{"expired", "vapid t=" + token(t, key, hdr, Claims{Aud: origin, Exp: now.Add(-time.Second).Unix(), Sub: good.Sub}) + ", k=" + k},
		{"exp beyond 24 h", "vapid t=" + token(t, key, hdr, Claims{Aud: origin, Exp: now.Add(25 * time.Hour).Unix(), Sub: good.Sub}) + ", k=" + k},
		{"no sub", "vapid t=" + token(t, key, hdr, Claims{Aud: origin, Exp: good.Exp}) + ", k=" + k},
		{"signed by another key", "vapid t=" + token(t, other, hdr, good) + ", k=" + k},
		{"not ES256", "vapid t=" + token(t, key, `{"typ":"JWT","alg":"HS256"}`, good) + ", k=" + k},
		{"no k", "vapid t=" + token(t, key, hdr, good)},
		{"WebPush scheme", "WebPush " + token(t, key, hdr, good)},
		{"two parts", "vapid t=a.b, k=" + k},
	} {
		if _, _, err := VerifyVAPID(tc.header, origin, now); err == nil {
			t.Errorf("%s: accepted", tc.name)
		} else if testing.Verbose() {
			t.Logf("%s: %v", tc.name, err)
		}
	}
	if _, _, err := VerifyVAPID(strings.Replace("vapid t="+token(t, key, hdr, good)+", k="+k, "vapid", "Vapid", 1), origin, now); err != nil {
		t.Errorf("scheme is case-insensitive: %v", err)
	}
}
