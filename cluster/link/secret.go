package link

import (
	"fmt"

	"github.com/lemonproxy/lemonproxy/internal/secretfile"
)

// LoadSecret reads the cluster secret from the file at path (the
// -cluster-secret flag): its contents with trailing spaces, tabs and line
// ends trimmed, which must leave at least MinSecretLen bytes (e.g. the
// output of `openssl rand -hex 32`). Like ssh with private keys, it
// refuses a file that others may read or write (mode & 0o007 != 0); the
// group may read it, so that an operator can give it to the service's
// group (0640). The file must be a regular file of at most 64 KiB
// (secretfile.Read).
func LoadSecret(path string) ([]byte, error) {
	secret, err := secretfile.Read(path, "link: cluster secret")
	if err != nil {
		return nil, err
	}
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("link: cluster secret %s: %w (%d)", path, ErrSecret, len(secret))
	}
	return secret, nil
}
