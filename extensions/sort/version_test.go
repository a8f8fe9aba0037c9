package sort

import (
	"bytes"
	"maps"
	"slices"
	"testing"

	"github.com/lemonproxy/lemonproxy/accountdata"
)

// sortRecords returns every sort record of the fixture's one account,
// and the account.
func (f *fixture) sortRecords(t *testing.T) (string, map[string][]byte) {
	t.Helper()
	var account string
	f.data.Accounts("sort/", func(a string) bool { account = a; return false })
	recs := map[string][]byte{}
	if err := f.data.List(account, "sort/", func(k string, v []byte) bool {
		recs[k] = bytes.Clone(v)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return account, recs
}

// TestNewerRecordsLeftAlone: in a cluster being upgraded node by node,
// nodes of two versions share the records. A record of a newer version
// than this code's was deleted at the next load and written again in
// this version, which the newer node then deleted and wrote again, for
// as long as both ran. A newer record is now left as it is, the
// message's keys fetched and held in memory only; an older one is still
// replaced.
func TestNewerRecordsLeftAlone(t *testing.T) {
	f := newFixture(t)
	c := f.login(t)
	c.ExpectDo("a", "SORT (ARRIVAL) UTF-8 ALL", "* SORT 3 2 4 1 5", "a OK *")
	account, recs := f.sortRecords(t)
	if len(recs) != 5 {
		t.Fatalf("%d records after the first SORT, want 5", len(recs))
	}
	keys := slices.Sorted(maps.Keys(recs)) // by UID
	// A newer node's records of messages 1 and 2 (whatever their
	// encoding), and an older one of message 3.
	newer := map[string][]byte{
		keys[0]: {recordVersion + 1, 'x', 'y'},
		keys[1]: append([]byte{recordVersion + 1}, recs[keys[1]][1:]...),
	}
	older := append([]byte{recordVersion - 1}, recs[keys[2]][1:]...)
	puts := []accountdata.Record{{Key: keys[2], Value: older}}
	for k, v := range newer {
		puts = append(puts, accountdata.Record{Key: k, Value: v})
	}
	if err := f.data.Write(account, puts, nil); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		before := f.ext.cache.fetched.Load()
		f.ext.cache.drop()
		c.ExpectDo("b", "SORT (ARRIVAL) UTF-8 ALL", "* SORT 3 2 4 1 5", "b OK *")
		want := int64(2) // the newer records' messages, every time
		if round == 0 {
			want = 3 // and the older record's, once
		}
		if n := f.ext.cache.fetched.Load() - before; n != want {
			t.Errorf("round %d: %d messages' keys fetched, want %d", round, n, want)
		}
		_, got := f.sortRecords(t)
		if len(got) != 5 {
			t.Errorf("round %d: %d records, want 5", round, len(got))
		}
		for k, v := range newer {
			if !bytes.Equal(got[k], v) {
				t.Errorf("round %d: the newer record %q became %q", round, k, got[k])
			}
		}
		if v := got[keys[2]]; len(v) == 0 || v[0] != recordVersion {
			t.Errorf("round %d: the older record %q is %q, want one of version %d", round, keys[2], v, recordVersion)
		}
	}
}
