package push

import (
	"maps"
	"sync"
)

// Stats are push's figures for metrics.
type Stats struct {
	// Registrations by channel.
	Registrations map[string]int
	// LiveAccounts are watched live (a hub watcher each), PolledAccounts
	// are in the polling rotation (live accounts with more mailboxes
	// too), ParkedAccounts cannot be logged in for until their user logs
	// in through the proxy.
	LiveAccounts, PolledAccounts, ParkedAccounts int
	// Pending pushes, all channels.
	Pending int
	// By channel, since start: pushes delivered, attempts that failed,
	// failed pushes scheduled again, pushes given up (after GiveUp, or
	// refused for good; "" counts unreadable records), registrations
	// removed because their push service said they are gone.
	Sent, Failed, Retried, GivenUp, Gone map[string]uint64
}

type stats struct {
	mu                                       sync.Mutex
	sentN, failedN, retriedN, gaveUpN, goneN map[string]uint64
}

func (s *stats) init() {
	s.sentN, s.failedN, s.retriedN = map[string]uint64{}, map[string]uint64{}, map[string]uint64{}
	s.gaveUpN, s.goneN = map[string]uint64{}, map[string]uint64{}
}

func (s *stats) addChannel(ch string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range []map[string]uint64{s.sentN, s.failedN, s.retriedN, s.gaveUpN, s.goneN} {
		m[ch] += 0
	}
}

func (s *stats) add(m map[string]uint64, ch string, n int) {
	s.mu.Lock()
	m[ch] += uint64(n)
	s.mu.Unlock()
}

func (s *stats) sent(ch string)          { s.add(s.sentN, ch, 1) }
func (s *stats) failed(ch string)        { s.add(s.failedN, ch, 1) }
func (s *stats) retried(ch string)       { s.add(s.retriedN, ch, 1) }
func (s *stats) gone(ch string)          { s.add(s.goneN, ch, 1) }
func (s *stats) gaveUp(ch string, n int) { s.add(s.gaveUpN, ch, n) }

// Stats returns the extension's figures now.
func (e *Extension) Stats() Stats {
	st := Stats{Registrations: map[string]int{}}
	for ch := range e.channels {
		st.Registrations[ch] = 0
	}
	e.w.mu.Lock()
	for _, a := range e.w.accts {
		for _, r := range a.regs {
			st.Registrations[r.channel]++
		}
		switch {
		case a.parked:
			st.ParkedAccounts++
		case a.sub != nil:
			st.LiveAccounts++
		}
		if a.pollIdx >= 0 || a.polling {
			st.PolledAccounts++
		}
	}
	e.w.mu.Unlock()
	st.Pending = e.q.size()
	e.stats.mu.Lock()
	st.Sent, st.Failed, st.Retried = maps.Clone(e.stats.sentN), maps.Clone(e.stats.failedN), maps.Clone(e.stats.retriedN)
	st.GivenUp, st.Gone = maps.Clone(e.stats.gaveUpN), maps.Clone(e.stats.goneN)
	e.stats.mu.Unlock()
	return st
}
