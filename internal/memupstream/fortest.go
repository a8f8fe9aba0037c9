package memupstream

import "testing"

// StartForTest starts a server for a test, with the users given as name,
// password pairs; it stops when the test ends.
func StartForTest(t testing.TB, opt Options, userPass ...string) *Server {
	t.Helper()
	s, err := Start(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for i := 0; i+1 < len(userPass); i += 2 {
		if err := s.AddUser(userPass[i], userPass[i+1]); err != nil {
			t.Fatal(err)
		}
	}
	return s
}
