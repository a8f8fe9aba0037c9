// Package secretfile reads the secrets an operator gives lemonproxy in
// files (the cluster secret, push's gateway secret, master password and
// credentials key): one reader with one set of checks, so that every
// secret file is refused for the same reasons.
package secretfile

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
)

// MaxSize bounds what Read reads: a secret is short, and a wrong path (a
// log, a device) should fail, not fill memory.
const MaxSize = 64 << 10

// Read returns the contents of the file at path with trailing spaces,
// tabs and line ends trimmed (so that `echo secret > file` works). Like
// ssh with private keys, it refuses a file that others may read or write
// (mode & 0o007 != 0); the group may read it, so that an operator can
// give it to the service's group (0640). The file must be a regular file
// of at most MaxSize bytes. what names the secret in errors ("cluster
// secret").
func Read(path, what string) ([]byte, error) {
	data, err := ReadBytes(path, what)
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(data, " \t\r\n"), nil
}

// ReadBytes is Read without the trimming, for a secret of random bytes
// (a key), whose last byte may well be a space or a line end.
func ReadBytes(path, what string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s %s is not a regular file", what, path)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o007 != 0 {
		return nil, fmt.Errorf("%s %s has mode %v: others may use it (chmod o-rwx %s)", what, path, fi.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%s %s is larger than %d bytes", what, path, MaxSize)
	}
	return data, nil
}
