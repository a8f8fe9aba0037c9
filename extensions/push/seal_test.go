package push

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestParseKey(t *testing.T) {
	key := make([]byte, KeySize)
	rand.Read(key)
	key[KeySize-1] = '\n' // a raw key may end with what looks like a line end
	for name, data := range map[string][]byte{
		"raw":         key,
		"std":         []byte(base64.StdEncoding.EncodeToString(key) + "\n"),
		"raw std":     []byte(base64.RawStdEncoding.EncodeToString(key)),
		"url":         []byte("  " + base64.URLEncoding.EncodeToString(key) + "\r\n"),
		"raw url":     []byte(base64.RawURLEncoding.EncodeToString(key)),
		"std no line": []byte(base64.StdEncoding.EncodeToString(key)),
	} {
		got, err := ParseKey(data)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("%s: %x, %v", name, got, err)
		}
	}
	for name, data := range map[string][]byte{
		"short":     key[:31],
		"long":      append(append([]byte{}, key...), 'x'),
		"b64 of 31": []byte(base64.StdEncoding.EncodeToString(key[:31])),
		"b64 of 33": []byte(base64.StdEncoding.EncodeToString(append(append([]byte{}, key...), 1))),
		"text":      []byte("not a key at all, not base64 either!"),
		"empty":     nil,
	} {
		if _, err := ParseKey(data); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	key := make([]byte, KeySize)
	rand.Read(key)
	p := filepath.Join(dir, "key")
	if err := os.WriteFile(p, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadKey(p); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("LoadKey: %x, %v", got, err)
	}
	os.Chmod(p, 0o644)
	if _, err := LoadKey(p); err == nil {
		t.Fatal("a key file others may read was accepted")
	}
}

func TestSeal(t *testing.T) {
	key := make([]byte, KeySize)
	rand.Read(key)
	s, err := newSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := s.seal("acct-a", "alice", "secret pass\x00with nul")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("secret")) || bytes.Contains(sealed, []byte("alice")) {
		t.Fatal("plaintext in the sealed record")
	}
	user, pass, err := s.open("acct-a", sealed)
	if err != nil || user != "alice" || pass != "secret pass\x00with nul" {
		t.Fatalf("open: %q %q %v", user, pass, err)
	}
	again, _ := s.seal("acct-a", "alice", "secret pass\x00with nul")
	if bytes.Equal(again, sealed) {
		t.Fatal("two sealings are equal: the nonce is not fresh")
	}
	// Another account's record, another key, a changed byte: nothing opens.
	if _, _, err := s.open("acct-b", sealed); !errors.Is(err, errSealed) {
		t.Errorf("opened for another account: %v", err)
	}
	other := make([]byte, KeySize)
	rand.Read(other)
	s2, _ := newSealer(other)
	if _, _, err := s2.open("acct-a", sealed); !errors.Is(err, errSealed) {
		t.Errorf("opened with another key: %v", err)
	}
	for i := range sealed {
		bad := append([]byte{}, sealed...)
		bad[i] ^= 1
		if _, _, err := s.open("acct-a", bad); !errors.Is(err, errSealed) {
			t.Fatalf("byte %d changed: opened (%v)", i, err)
		}
	}
	for _, n := range []int{0, 1, 12, 28} {
		if _, _, err := s.open("acct-a", sealed[:n]); !errors.Is(err, errSealed) {
			t.Errorf("%d bytes: %v", n, err)
		}
	}
	if _, err := s.seal("a", "al\x00ice", "p"); err == nil {
		t.Error("a user name with NUL sealed")
	}
}

func FuzzOpen(f *testing.F) {
	key := bytes.Repeat([]byte{7}, KeySize)
	s, _ := newSealer(key)
	sealed, _ := s.seal("a", "u", "p")
	f.Add(sealed)
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if u, p, err := s.open("a", b); err == nil && (u != "u" || p != "p") {
			t.Fatalf("forged record opened: %q %q", u, p)
		}
	})
}
