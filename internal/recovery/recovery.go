// Package recovery catches panics at the proxy's goroutine boundaries (a
// client session, a mailbox watcher, a NOTIFY account watcher, the pool's
// janitor, the state store, a push channel's delivery) and counts them by place.
//
// An unrecovered panic in any goroutine ends the whole process: every
// client session drops, and if the cause is on disk (a damaged state file)
// it happens again after every restart. A panic is a bug or damage, never
// a normal outcome, so it is logged at ERROR with its stack, only what it
// affected is closed (the session, the watcher, which reconnects), and the
// count is exported as lemonproxy_panics_recovered_total{place}.
package recovery

import (
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync/atomic"
)

// Place names where a panic was recovered.
type Place int

// The places.
const (
	Session Place = iota
	Watcher
	AccountWatcher
	PoolJanitor
	Store
	// Push is a push channel's delivery (extensions/push).
	Push
	numPlaces
)

var names = [numPlaces]string{"session", "watcher", "account_watcher", "pool_janitor", "statestore", "push"}

func (p Place) String() string { return names[p] }

// Places returns every place, for metrics.
func Places() []Place {
	out := make([]Place, numPlaces)
	for i := range out {
		out[i] = Place(i)
	}
	return out
}

var counts [numPlaces]atomic.Int64

// Count returns how many panics were recovered at p since the process
// started.
func Count(p Place) int64 { return counts[p].Load() }

// Recover must be deferred directly (defer recovery.Recover(...)): if the
// goroutine panics, it stops the panic, counts and logs it with its stack,
// and calls then (if not nil) with an error describing it.
func Recover(p Place, log *slog.Logger, then func(error)) {
	if v := recover(); v != nil {
		recovered(p, v, log, then)
	}
}

// RecoverLazy is Recover for a deferred call that should not build its
// logger unless a panic happened (a logger With attributes is an
// allocation, and hub watchers defer this on every wake).
func RecoverLazy(p Place, log func() *slog.Logger, then func(error)) {
	if v := recover(); v != nil {
		recovered(p, v, log(), then)
	}
}

func recovered(p Place, v any, log *slog.Logger, then func(error)) {
	counts[p].Add(1)
	if log == nil {
		log = slog.Default()
	}
	err := fmt.Errorf("panic in %s: %v", p, v)
	log.Error("panic recovered; closing what it affected", "place", p.String(), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	if then != nil {
		then(err)
	}
}

// Counted counts a panic at p that the caller recovered itself (the
// state store turns one into an error).
func Counted(p Place) { counts[p].Add(1) }
