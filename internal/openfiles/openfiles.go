// Package openfiles counts the files this process holds open under a
// directory, for tests that check a file is closed even when it was
// unlinked as soon as it was made (the spools of extensions/internal/
// urlfetch), which only /proc/self/fd still shows.
package openfiles

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// In returns how many of this process's open files are under dir. The
// error says /proc/self/fd cannot be read (not Linux): tests skip then.
func In(dir string) (int, error) {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("openfiles: %w", err)
	}
	prefix := filepath.Clean(dir) + string(filepath.Separator)
	n := 0
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(target, prefix) {
			n++
		}
	}
	return n, nil
}
