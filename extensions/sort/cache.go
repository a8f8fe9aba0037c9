package sort

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// A message's sort keys never change for its UID: they are made of its
// envelope, INTERNALDATE and RFC822.SIZE, all immutable in IMAP. So they
// are fetched once and kept, in two places:
//
//   - in Services.Data, one record per message, under
//     "sort/" + mailbox + "\x00" + UIDVALIDITY (8 hex digits) + "/" + UID
//     (8 hex digits), the value as Keys.encode writes it. The NUL cannot
//     occur in a mailbox name, so one mailbox's prefix never covers
//     another's. Records of another UIDVALIDITY are deleted when the
//     mailbox is next loaded, and so are records of messages the hub no
//     longer lists (expunged), and records of an older version; those of
//     a newer version are left alone (keys.go). At most Config.MaxStored
//     records per account are kept; beyond that, new keys are held in
//     memory only.
//   - in memory, per mailbox and UIDVALIDITY, folded (collation applied)
//     and sorted by UID, up to Config.MaxCached messages and
//     Config.MaxCachedBytes bytes (keyBytes) over all accounts, least
//     recently used mailboxes dropped first. The bytes matter as much as
//     the messages: a client decides the subjects and addresses of what it
//     appends, and a message's keys are as long as they are.
//
// A SORT thus fetches from the upstream only the messages it has never
// seen: after the first SORT of a mailbox, the new mail.

// fetchChunk is how many UIDs one UID FETCH of keys names.
const fetchChunk = 2000

type boxID struct {
	account, mailbox string
	uidValidity      uint32
}

// box is one mailbox's keys in memory.
type box struct {
	id boxID
	// mu is held for the whole of a sort of the mailbox: two sessions
	// sorting it at once fetch the missing keys once.
	mu     sync.Mutex
	loaded bool
	msgs   []folded // by UID
	// newer are the UIDs (sorted) whose records are of a newer version
	// than this code's (newerRecord): their keys are fetched and held
	// in msgs, but not stored over those records.
	newer []uint32
	// counted and countedBytes (under cache.mu) are len(msgs) and their
	// keyBytes as the cache's totals know them.
	counted, countedBytes int64
	elem                  *list.Element
}

// lookup returns the keys of uids (ascending) that b holds, and the UIDs
// it does not hold: one walk along both lists, both in UID order.
func (b *box) lookup(uids []uint32) (found []*folded, missing []uint32) {
	found = make([]*folded, 0, len(uids))
	j := 0
	for _, u := range uids {
		for j < len(b.msgs) && b.msgs[j].uid < u {
			j++
		}
		if j < len(b.msgs) && b.msgs[j].uid == u {
			found = append(found, &b.msgs[j])
		} else {
			missing = append(missing, u)
		}
	}
	return found, missing
}

func int64cmp(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

type cache struct {
	data      accountdata.Store
	maxCached int64
	maxBytes  int64
	maxStored int
	log       *slog.Logger

	mu                sync.Mutex
	boxes             map[boxID]*box
	lru               list.List // of *box, most recent first
	total, totalBytes int64
	// stored counts each account's records once known (loaded lazily).
	stored map[string]int
	// fetched counts the messages whose keys came from an upstream.
	fetched atomic.Int64
}

func newCache(data accountdata.Store, maxCached int, maxBytes int64, maxStored int) *cache {
	return &cache{data: data, maxCached: int64(maxCached), maxBytes: maxBytes, maxStored: maxStored, boxes: map[boxID]*box{},
		stored: map[string]int{}, log: slog.Default().With("ext", "sort")}
}

// box returns the mailbox's entry, made the most recently used.
func (c *cache) box(id boxID) *box {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.boxes[id]
	if b == nil {
		// An entry costs something even without keys (an empty
		// mailbox, a sort that failed): counted, so that entries for
		// many mailboxes cannot pile up under the bound.
		b = &box{id: id, countedBytes: boxBytes(id)}
		b.elem = c.lru.PushFront(b)
		c.boxes[id] = b
		c.totalBytes += b.countedBytes
		c.evict(b)
		return b
	}
	c.lru.MoveToFront(b.elem)
	return b
}

// grew records that b holds msgs now (b.mu held), and drops the least
// recently used other mailboxes while either total is above its bound. b
// itself stays even when it alone is larger: the sort in progress needs
// it (its size is the mailbox's, which the upstream bounds).
func (c *cache) grew(b *box, msgs []folded) {
	bytes := boxBytes(b.id)
	for i := range msgs {
		bytes += keyBytes(&msgs[i])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.boxes[b.id] != b {
		return // dropped meanwhile: not counted
	}
	c.total += int64(len(msgs)) - b.counted
	c.totalBytes += bytes - b.countedBytes
	b.counted, b.countedBytes = int64(len(msgs)), bytes
	c.evict(b)
}

// boxBytes is what a mailbox's entry costs besides its keys.
func boxBytes(id boxID) int64 { return 256 + int64(len(id.account)+len(id.mailbox)) }

// evict drops the least recently used mailboxes but keep while either
// total is above its bound (c.mu held).
func (c *cache) evict(keep *box) {
	for c.total > c.maxCached || c.totalBytes > c.maxBytes {
		e := c.lru.Back()
		old := e.Value.(*box)
		if old == keep {
			break
		}
		c.lru.Remove(e)
		delete(c.boxes, old.id)
		c.total -= old.counted
		c.totalBytes -= old.countedBytes
	}
}

// drop forgets every mailbox of account (SessionClosed does not call it:
// the keys outlive sessions; tests do, to measure loading from the store).
func (c *cache) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.boxes = map[boxID]*box{}
	c.lru.Init()
	c.total, c.totalBytes = 0, 0
}

// forget deletes a mailbox's records and drops it from memory; with a
// delim (not ""), also those of the mailboxes below it.
func (c *cache) forget(account, mailbox, delim string) {
	var keys []string
	collect := func(key string, _ []byte) bool {
		keys = append(keys, key)
		return true
	}
	err := c.data.List(account, mailboxPrefix(mailbox), collect)
	if err == nil && delim != "" {
		err = c.data.List(account, "sort/"+mailbox+delim, collect)
	}
	if err == nil && len(keys) > 0 {
		if err := c.data.Write(account, nil, keys); err != nil {
			c.log.Warn("deleting sort keys", "account", account, "err", err)
		} else {
			c.addStored(account, -len(keys))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, b := range c.boxes {
		below := delim != "" && strings.HasPrefix(id.mailbox, mailbox+delim)
		if id.account == account && (id.mailbox == mailbox || below) {
			c.lru.Remove(b.elem)
			delete(c.boxes, id)
			c.total -= b.counted
			c.totalBytes -= b.countedBytes
		}
	}
}

func mailboxPrefix(mailbox string) string { return "sort/" + mailbox + "\x00" }

func recordPrefix(mailbox string, uidValidity uint32) string {
	return fmt.Sprintf("%s%08x/", mailboxPrefix(mailbox), uidValidity)
}

// load reads the mailbox's records (b.mu held), deleting those of other
// UIDVALIDITYs, of messages no longer in exists (sorted UIDs of the
// mailbox, all of them up to maxUID) and of an older version; those of a
// newer version are left alone (keys.go, newerRecord).
func (c *cache) load(b *box, exists []uint32, maxUID uint32) {
	if b.loaded {
		return
	}
	b.loaded = true
	id := b.id
	cur := recordPrefix(id.mailbox, id.uidValidity)
	var stale []string
	var msgs []folded
	var newer []uint32
	err := c.data.List(id.account, mailboxPrefix(id.mailbox), func(key string, value []byte) bool {
		rest, ok := strings.CutPrefix(key, cur)
		if !ok {
			stale = append(stale, key)
			return true
		}
		u, err := strconv.ParseUint(rest, 16, 32)
		if err != nil {
			stale = append(stale, key)
			return true
		}
		uid := uint32(u)
		if _, found := slices.BinarySearch(exists, uid); !found && uid <= maxUID {
			stale = append(stale, key) // expunged
			return true
		}
		if newerRecord(value) {
			newer = append(newer, uid)
			return true
		}
		k, err := decodeKeys(value)
		if err != nil {
			stale = append(stale, key)
			return true
		}
		msgs = append(msgs, fold(uid, &k))
		return true
	})
	if err != nil {
		c.log.Warn("reading sort keys", "account", id.account, "mailbox", id.mailbox, "err", err)
		return
	}
	slices.SortFunc(msgs, func(a, b folded) int { return int64cmp(int64(a.uid), int64(b.uid)) })
	slices.Sort(newer)
	b.msgs, b.newer = msgs, newer
	c.grew(b, msgs)
	if len(stale) > 0 {
		if err := c.data.Write(id.account, nil, stale); err != nil {
			c.log.Warn("deleting stale sort keys", "account", id.account, "err", err)
		}
		c.addStored(id.account, -len(stale))
	}
}

// addStored adjusts the account's record count, counting it first if it
// is not known yet; it returns the count.
func (c *cache) addStored(account string, n int) int {
	c.mu.Lock()
	cnt, ok := c.stored[account]
	c.mu.Unlock()
	if !ok {
		var err error
		if cnt, err = accountdata.Count(c.data, account, "sort/"); err != nil {
			return c.maxStored // unknown: store nothing more
		}
		n = 0 // the count already includes what was just written or deleted
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.stored[account]; ok {
		cnt = cur
	}
	cnt = max(cnt+n, 0)
	c.stored[account] = cnt
	return cnt
}

// forgetStored forgets the account's record count: the next store counts
// the records anew (Extension.SessionClosed).
func (c *cache) forgetStored(account string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.stored, account)
}

// fetch fetches the keys of uids (sorted, none cached) from the
// upstream with the session's mailbox selected, adds them to b (b.mu
// held) and stores them. UIDs the upstream no longer has are left out.
func (c *cache) fetch(ctx context.Context, s *proxy.Session, b *box, uids []uint32) error {
	for len(uids) > 0 {
		chunk := uids[:min(len(uids), fetchChunk)]
		uids = uids[len(chunk):]
		var got []folded
		var recs []accountdata.Record
		prefix := recordPrefix(b.id.mailbox, b.id.uidValidity)
		_, err := s.Exec(ctx, "UID FETCH "+uidSet(chunk)+" "+fetchItems, func(r *upstream.Response) {
			if r.Head.Name != "FETCH" {
				return
			}
			uid, k, err := keysOf(r.Segments)
			if err != nil {
				c.log.Debug("unreadable FETCH of sort keys", "err", err)
				return
			}
			if _, ok := slices.BinarySearch(chunk, uid); !ok {
				return // another message's unsolicited FETCH
			}
			c.fetched.Add(1)
			got = append(got, fold(uid, &k))
			if _, newer := slices.BinarySearch(b.newer, uid); !newer {
				recs = append(recs, accountdata.Record{Key: fmt.Sprintf("%s%08x", prefix, uid), Value: k.encode()})
			}
		})
		if err != nil {
			return fmt.Errorf("fetching sort keys: %w", err)
		}
		c.store(b.id.account, recs)
		b.msgs = append(b.msgs, got...)
		slices.SortFunc(b.msgs, func(a, b folded) int { return int64cmp(int64(a.uid), int64(b.uid)) })
		b.msgs = slices.CompactFunc(b.msgs, func(a, b folded) bool { return a.uid == b.uid })
		c.grew(b, b.msgs)
	}
	return nil
}

// store writes records within the account's bound.
func (c *cache) store(account string, recs []accountdata.Record) {
	if len(recs) == 0 {
		return
	}
	if room := c.maxStored - c.addStored(account, 0); room < len(recs) {
		recs = recs[:max(room, 0)]
	}
	if len(recs) == 0 {
		return
	}
	if err := c.data.Write(account, recs, nil); err != nil {
		c.log.Warn("storing sort keys", "account", account, "err", err)
		return
	}
	c.addStored(account, len(recs))
}

// uidSet writes sorted UIDs as a compact set, consecutive ones as ranges.
func uidSet(uids []uint32) string {
	var b []byte
	for i := 0; i < len(uids); {
		j := i
		for j+1 < len(uids) && uids[j+1] == uids[j]+1 {
			j++
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(uids[i]), 10)
		if j > i {
			b = strconv.AppendUint(append(b, ':'), uint64(uids[j]), 10)
		}
		i = j + 1
	}
	return string(b)
}
