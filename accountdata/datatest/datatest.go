// Package datatest holds the behavioural tests every accountdata.Store must
// pass, so that each implementation is held to the same semantics by the
// same code. An implementation's test calls Run with a function that opens a
// new, empty store for one subtest.
package datatest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/lemonproxy/lemonproxy/accountdata"
)

// Run runs the behavioural tests, each as a subtest on a store of its own
// from open. Closing the store, if it needs it, is open's business
// (t.Cleanup).
func Run(t *testing.T, open func(t *testing.T) accountdata.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s accountdata.Store)
	}{
		{"GetMissing", testGetMissing},
		{"PutGetDelete", testPutGetDelete},
		{"EmptyValue", testEmptyValue},
		{"Atomic", testAtomic},
		{"ListPrefixOrder", testListPrefixOrder},
		{"ListStop", testListStop},
		{"Isolation", testIsolation},
		{"AnyBytes", testAnyBytes},
		{"Accounts", testAccounts},
		{"Concurrent", testConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open(t)) })
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func list(t *testing.T, s accountdata.Store, account, prefix string) []accountdata.Record {
	t.Helper()
	var out []accountdata.Record
	must(t, s.List(account, prefix, func(k string, v []byte) bool {
		out = append(out, accountdata.Record{Key: k, Value: v})
		return true
	}))
	return out
}

func testGetMissing(t *testing.T, s accountdata.Store) {
	if _, err := s.Get("alice", "nothing"); !errors.Is(err, accountdata.ErrNotFound) {
		t.Fatalf("Get of a missing key: %v, want ErrNotFound", err)
	}
	must(t, accountdata.Delete(s, "alice", "nothing"))
}

func testPutGetDelete(t *testing.T, s accountdata.Store) {
	must(t, accountdata.Put(s, "alice", "k", []byte("one")))
	must(t, accountdata.Put(s, "alice", "k", []byte("two")))
	v, err := s.Get("alice", "k")
	must(t, err)
	if string(v) != "two" {
		t.Fatalf("Get = %q, want the last value %q", v, "two")
	}
	v[0] = 'X' // the caller's copy
	if v, _ := s.Get("alice", "k"); string(v) != "two" {
		t.Fatalf("changing a returned value changed the store: %q", v)
	}
	must(t, accountdata.Delete(s, "alice", "k"))
	if _, err := s.Get("alice", "k"); !errors.Is(err, accountdata.ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
	}
}

func testEmptyValue(t *testing.T, s accountdata.Store) {
	must(t, accountdata.Put(s, "alice", "empty", nil))
	v, err := s.Get("alice", "empty")
	if err != nil || len(v) != 0 {
		t.Fatalf("Get of an empty record = %q, %v; want an empty value", v, err)
	}
}

func testAtomic(t *testing.T, s accountdata.Store) {
	must(t, accountdata.Put(s, "alice", "old", []byte("x")))
	must(t, s.Write("alice", []accountdata.Record{{Key: "a", Value: []byte("1")}, {Key: "b", Value: []byte("2")}}, []string{"old", "a"}))
	got := list(t, s, "alice", "")
	want := []accountdata.Record{{Key: "b", Value: []byte("2")}}
	if !equal(got, want) {
		t.Fatalf("after puts then deletes (a deleted after its put): %v, want %v", got, want)
	}
}

func testListPrefixOrder(t *testing.T, s accountdata.Store) {
	keys := []string{"f/b", "f/a", "f/\xff", "f", "g/a", "e/z", "f/a/1"}
	for _, k := range keys {
		must(t, accountdata.Put(s, "alice", k, []byte(k)))
	}
	var got []string
	for _, r := range list(t, s, "alice", "f/") {
		got = append(got, r.Key)
		if string(r.Value) != r.Key {
			t.Errorf("record %q has value %q", r.Key, r.Value)
		}
	}
	want := []string{"f/a", "f/a/1", "f/b", "f/\xff"}
	if !slices.Equal(got, want) {
		t.Fatalf("List(f/) = %q, want %q", got, want)
	}
	if n, err := accountdata.Count(s, "alice", ""); err != nil || n != len(keys) {
		t.Fatalf("Count = %d, %v; want %d", n, err, len(keys))
	}
}

func testListStop(t *testing.T, s accountdata.Store) {
	for i := range 5 {
		must(t, accountdata.Put(s, "alice", fmt.Sprint(i), nil))
	}
	n := 0
	must(t, s.List("alice", "", func(string, []byte) bool { n++; return n < 2 }))
	if n != 2 {
		t.Fatalf("List went on after fn returned false: %d calls", n)
	}
}

func testIsolation(t *testing.T, s accountdata.Store) {
	must(t, accountdata.Put(s, "alice", "k", []byte("a")))
	must(t, accountdata.Put(s, "alice\x00x", "k", []byte("b")))
	must(t, accountdata.Put(s, "alic", "ek", []byte("c")))
	if v, _ := s.Get("alice", "k"); string(v) != "a" {
		t.Fatalf("alice's record = %q", v)
	}
	if got := list(t, s, "alic", ""); len(got) != 1 || got[0].Key != "ek" {
		t.Fatalf("List of account alic = %v: another account's records leak", got)
	}
	if got := list(t, s, "bob", ""); len(got) != 0 {
		t.Fatalf("bob has records: %v", got)
	}
	must(t, accountdata.Delete(s, "alice\x00x", "k"))
	if v, _ := s.Get("alice", "k"); string(v) != "a" {
		t.Fatalf("deleting another account's record deleted alice's: %q", v)
	}
}

func testAnyBytes(t *testing.T, s accountdata.Store) {
	acct, key := "u\x00\xff\xfe", "k\x00\x01\xff"
	val := []byte{0, 0xff, '\n', 0}
	must(t, accountdata.Put(s, acct, key, val))
	v, err := s.Get(acct, key)
	must(t, err)
	if !bytes.Equal(v, val) {
		t.Fatalf("value = %q, want %q", v, val)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	must(t, accountdata.Put(s, acct, "big", big))
	if v, _ := s.Get(acct, "big"); !bytes.Equal(v, big) {
		t.Fatalf("a 1 MiB value came back with %d bytes", len(v))
	}
}

func testAccounts(t *testing.T, s accountdata.Store) {
	must(t, accountdata.Put(s, "carol", "push/1", nil))
	must(t, accountdata.Put(s, "alice", "push/2", nil))
	must(t, accountdata.Put(s, "alice", "push/3", nil))
	must(t, accountdata.Put(s, "bob", "metadata/x", nil))
	var got []string
	must(t, s.Accounts("push/", func(a string) bool { got = append(got, a); return true }))
	if want := []string{"alice", "carol"}; !slices.Equal(got, want) {
		t.Fatalf("Accounts(push/) = %q, want %q", got, want)
	}
	must(t, accountdata.Delete(s, "carol", "push/1"))
	got = nil
	must(t, s.Accounts("push/", func(a string) bool { got = append(got, a); return true }))
	if want := []string{"alice"}; !slices.Equal(got, want) {
		t.Fatalf("Accounts(push/) after delete = %q, want %q", got, want)
	}
}

func testConcurrent(t *testing.T, s accountdata.Store) {
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				if err := accountdata.Put(s, "alice", fmt.Sprintf("w%d/%02d", w, i), []byte{byte(i)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n, err := accountdata.Count(s, "alice", "w"); err != nil || n != 100 {
		t.Fatalf("after 4x25 concurrent puts: %d records, %v", n, err)
	}
}

func equal(a, b []accountdata.Record) bool {
	return slices.EqualFunc(a, b, func(x, y accountdata.Record) bool {
		return x.Key == y.Key && bytes.Equal(x.Value, y.Value)
	})
}
