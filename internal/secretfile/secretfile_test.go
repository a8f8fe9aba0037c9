package secretfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode) // past the umask
		return p
	}
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		want          string // "" for an error
	}{
		{"ok", "secret\n", 0o600, "secret"},
		{"group", " s e \r\n\t\n", 0o640, " s e"},
		{"binary", "\x00\x01\xff", 0o400, "\x00\x01\xff"},
		{"world", "secret\n", 0o644, ""},
		{"worldwrite", "secret\n", 0o602, ""},
		{"large", strings.Repeat("s", MaxSize+1), 0o600, ""},
	} {
		got, err := Read(write(tc.name, tc.content, tc.mode), "test secret")
		if string(got) != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "test secret") {
			t.Errorf("%s: error %q does not name the secret", tc.name, err)
		}
	}
	if _, err := Read(dir, "x"); err == nil {
		t.Error("a directory accepted")
	}
	if _, err := Read(filepath.Join(dir, "missing"), "x"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}

func TestReadBytes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "key")
	key := "0123456789abcdef0123456789abcd \n"
	if err := os.WriteFile(p, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadBytes(p, "key"); err != nil || string(got) != key {
		t.Fatalf("ReadBytes: %q, %v", got, err)
	}
	if got, err := Read(p, "key"); err != nil || string(got) != key[:30] {
		t.Fatalf("Read: %q, %v", got, err)
	}
}
