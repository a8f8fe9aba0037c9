// Package accountdata keeps small records per account that extensions need
// beyond a session and beyond a restart: METADATA entries the upstream cannot
// hold, named search filters, URLAUTH keys, push registrations, cached sort
// keys. It is the proxy's own data, not a cache of the upstream's: a record
// written here exists nowhere else.
//
// One Store serves every extension; each extension keeps its records under a
// key prefix of its own ("metadata/", "filters/", ...), written down in its
// package documentation, so that two extensions never share a key. Keys and
// values are bytes (Go strings for keys); accounts are the proxy's account
// keys (proxy.Account.Key), which may hold any byte.
//
// Limits are the caller's: a Store holds what it is given. Extensions bound
// what a client can make them store (records per account, bytes per
// record) and check before writing, with List or Count.
//
// Implementations: Memory (tests and the demo upstream), Bolt (one node,
// in the data directory) and cluster/pgdata (PostgreSQL, shared by a
// cluster's nodes, fenced by account ownership). The behaviour they share is
// tested once, by package datatest.
package accountdata

import (
	"errors"
	"sort"
	"strings"
	"sync"
)

// ErrNotFound is returned by Get for a key that holds no record.
var ErrNotFound = errors.New("accountdata: no such record")

// A Record is one key and its value.
type Record struct {
	Key   string
	Value []byte
}

// Store keeps records per account. All methods are safe for concurrent use.
// Values returned belong to the caller; values given are not retained
// (implementations copy them).
type Store interface {
	// Get returns the value of key, or ErrNotFound.
	Get(account, key string) ([]byte, error)
	// Write applies puts and then deletes to account's records in one
	// atomic step: a reader sees all of them or none. Deleting a key that
	// holds nothing is not an error. A nil Value in puts stores an empty
	// value (a record exists), it does not delete.
	Write(account string, puts []Record, deletes []string) error
	// List calls fn for every record of account whose key begins with
	// prefix, in ascending byte order of keys, until fn returns false. fn
	// must not call the Store.
	List(account, prefix string, fn func(key string, value []byte) bool) error
	// Accounts calls fn for every account holding at least one record whose
	// key begins with prefix, in ascending byte order, until fn returns
	// false (e.g. the accounts with push registrations, at start). fn must
	// not call the Store.
	Accounts(prefix string, fn func(account string) bool) error
}

// Put stores one record.
func Put(s Store, account, key string, value []byte) error {
	return s.Write(account, []Record{{Key: key, Value: value}}, nil)
}

// Delete removes one record.
func Delete(s Store, account, key string) error {
	return s.Write(account, nil, []string{key})
}

// Count returns how many records of account begin with prefix.
func Count(s Store, account, prefix string) (int, error) {
	n := 0
	err := s.List(account, prefix, func(string, []byte) bool { n++; return true })
	return n, err
}

// Memory is a Store in memory: for tests and for the demo upstream, whose
// mail does not outlive the process either.
type Memory struct {
	mu   sync.RWMutex
	recs map[string]map[string][]byte // account -> key -> value
}

// NewMemory returns an empty Memory store.
func NewMemory() *Memory { return &Memory{recs: map[string]map[string][]byte{}} }

// Get implements Store.
func (m *Memory) Get(account, key string) ([]byte, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	v, ok := m.recs[account][key]
	if !ok {
		return nil, ErrNotFound
	}
	return append([]byte{}, v...), nil
}

// Write implements Store.
func (m *Memory) Write(account string, puts []Record, deletes []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	recs := m.recs[account]
	if recs == nil {
		recs = map[string][]byte{}
		m.recs[account] = recs
	}
	for _, r := range puts {
		recs[r.Key] = append([]byte{}, r.Value...)
	}
	for _, k := range deletes {
		delete(recs, k)
	}
	if len(recs) == 0 {
		delete(m.recs, account)
	}
	return nil
}

// List implements Store.
func (m *Memory) List(account, prefix string, fn func(key string, value []byte) bool) error {
	m.mu.RLock()
	var keys []string
	for k := range m.recs[account] {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	recs := make([]Record, len(keys))
	for i, k := range keys {
		recs[i] = Record{k, append([]byte{}, m.recs[account][k]...)}
	}
	m.mu.RUnlock()
	for _, r := range recs {
		if !fn(r.Key, r.Value) {
			break
		}
	}
	return nil
}

// Accounts implements Store.
func (m *Memory) Accounts(prefix string, fn func(account string) bool) error {
	m.mu.RLock()
	var accts []string
	for a, recs := range m.recs {
		for k := range recs {
			if strings.HasPrefix(k, prefix) {
				accts = append(accts, a)
				break
			}
		}
	}
	m.mu.RUnlock()
	sort.Strings(accts)
	for _, a := range accts {
		if !fn(a) {
			break
		}
	}
	return nil
}
