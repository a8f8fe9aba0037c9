package hub

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkIdleReport: the time from the upstream's "* n EXISTS" to the
// subscriber's notification for a watcher waiting in IDLE, parked (the
// default) and not parked, on a scripted upstream over loopback TCP: the
// watcher leaves IDLE, fetches the new message's UID and flags, commits,
// notifies. Each iteration is one report; the watcher is back in IDLE
// (and waiting, parked or not) before the next. Reported: p50 and p99 in
// µs.
//
//	go test ./hub -run '^$' -bench IdleReport -benchtime 2000x -count 5
func BenchmarkIdleReport(b *testing.B) {
	for _, park := range []bool{true, false} {
		b.Run(fmt.Sprintf("parked=%v", park), func(b *testing.B) {
			parkInIdle = park
			defer func() { parkInIdle = true }()
			u := startFake(b, true, 1)
			h := New(Config{Timeout: 5 * time.Second})
			defer h.Close()
			notified := make(chan struct{}, 1)
			sub, err := h.Watch(context.Background(), Key{"alice", "INBOX"}, u.dial(), func() {
				select {
				case notified <- struct{}{}:
				default:
				}
			})
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Close()
			lat := make([]time.Duration, 0, b.N)
			next := uint32(2)
			for b.Loop() {
				b.StopTimer()
				u.expect("IDLE")
				// Time to read "+ idling" and wait (parked or not),
				// the same in both modes; checked once below.
				time.Sleep(2 * time.Millisecond)
				select {
				case <-notified:
				default:
				}
				u.mu.Lock()
				u.uids = append(u.uids, next)
				n := len(u.uids)
				u.mu.Unlock()
				next++
				b.StartTimer()
				t0 := time.Now()
				u.push(fmt.Sprintf("* %d EXISTS", n))
				<-notified
				lat = append(lat, time.Since(t0))
				b.StopTimer()
				u.expect("DONE")
				b.StartTimer()
			}
			b.StopTimer()
			u.expect("IDLE")
			time.Sleep(2 * time.Millisecond)
			if p, inLoop := parkedWatchers(); park && (p != 1 || inLoop != 0) || !park && p != 0 {
				b.Fatalf("parked=%v: %d watchers parked, %d waiting in idleLoop", park, p, inLoop)
			}
			slices.Sort(lat)
			if len(lat) > 0 {
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			}
		})
	}
}
