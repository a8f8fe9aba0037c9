package sort

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestPythonImaplib runs testdata/imaplib_sort.py, a client of Python's
// standard imaplib, through the proxy (issue 17's real-client check for
// SORT and ESEARCH). Skipped without python3.
func TestPythonImaplib(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found")
	}
	f := newFixture(t)
	cmd := exec.Command(py, "testdata/imaplib_sort.py")
	cmd.Env = append(os.Environ(), "LEMONPROXY_ADDR="+f.p.Addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("imaplib_sort.py: %v\n%s", err, out)
	}
	want := strings.Join([]string{
		"caps SORT ESORT ESEARCH",
		"sort OK 1 5 4 2 3",
		"uid sort OK 2 5 4 1 3",
		"esort OK MIN 1 MAX 4 COUNT 5",
		"esearch OK COUNT 5",
	}, "\n") + "\n"
	if string(out) != want {
		t.Errorf("imaplib_sort.py printed\n%s\nwant\n%s", out, want)
	}
}
