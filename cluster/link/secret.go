package link

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
)

// maxSecretFile bounds what LoadSecret reads: a secret is short, and a
// wrong path (a log, a device) should fail, not fill memory.
const maxSecretFile = 64 << 10

// LoadSecret reads the cluster secret from the file at path (the
// -cluster-secret flag): its contents with trailing spaces, tabs and line
// ends trimmed, which must leave at least MinSecretLen bytes (e.g. the
// output of `openssl rand -hex 32`). Like ssh with private keys, it
// refuses a file that others may read or write (mode & 0o007 != 0); the
// group may read it, so that an operator can give it to the service's
// group (0640). The file must be a regular file of at most 64 KiB.
func LoadSecret(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("link: cluster secret: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("link: cluster secret: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("link: cluster secret %s is not a regular file", path)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o007 != 0 {
		return nil, fmt.Errorf("link: cluster secret %s has mode %v: others may use it (chmod o-rwx %s)", path, fi.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, fmt.Errorf("link: cluster secret: %w", err)
	}
	if len(data) > maxSecretFile {
		return nil, fmt.Errorf("link: cluster secret %s is larger than %d bytes", path, maxSecretFile)
	}
	secret := bytes.TrimRight(data, " \t\r\n")
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("link: cluster secret %s: %w (%d)", path, ErrSecret, len(secret))
	}
	return secret, nil
}
