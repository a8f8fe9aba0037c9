package accountwatch

import (
	"slices"
	"strings"
)

// diff compares two polls. A mailbox that disappeared while one with the
// same UIDVALIDITY (and hierarchy delimiter) appeared is taken as renamed:
// servers keep a mailbox's UIDVALIDITY across RENAME. A new mailbox that
// holds messages already is also reported for them, and a renamed one
// whose messages changed meanwhile.
func diff(old, next map[string]Mailbox) []Event {
	var evs []Event
	var gone, added []Mailbox
	for name, o := range old {
		if _, ok := next[name]; !ok {
			gone = append(gone, o)
		}
	}
	for name, n := range next {
		if _, ok := old[name]; !ok {
			added = append(added, n)
		}
	}
	byName := func(a, b Mailbox) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(gone, byName)
	slices.SortFunc(added, byName)
	for _, g := range gone {
		i := slices.IndexFunc(added, func(a Mailbox) bool {
			return g.Status.UIDValidity != 0 && a.Status.UIDValidity == g.Status.UIDValidity && a.Delim == g.Delim
		})
		if i < 0 {
			evs = append(evs, Event{Kind: Deleted, Mailbox: g})
			continue
		}
		evs = append(evs, Event{Kind: Renamed, Mailbox: added[i], OldName: g.Name})
		if a, b := g.Status, added[i].Status; a.Messages != b.Messages || a.UIDNext != b.UIDNext {
			// Mail came or went as it was renamed: no later poll would
			// show it, comparing the new name with itself.
			evs = append(evs, Event{Kind: Messages, Mailbox: added[i]})
		}
		added = slices.Delete(added, i, i+1)
	}
	for _, a := range added {
		evs = append(evs, Event{Kind: Created, Mailbox: a})
		if a.Subscribed {
			evs = append(evs, Event{Kind: Subscribed, Mailbox: a})
		}
		if a.Selectable && a.Status.Messages > 0 {
			// Made with mail in it between two polls (Sieve's
			// fileinto :create, a CREATE and an APPEND): new messages
			// too (RFC 5465 5.2), which no later poll would show.
			evs = append(evs, Event{Kind: Messages, Mailbox: a})
		}
	}
	names := make([]string, 0, len(next))
	for name := range next {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		n := next[name]
		o, ok := old[name]
		if !ok {
			continue
		}
		// A mailbox deleted while others below it stay keeps its name in
		// LIST as their \Noselect parent (Dovecot's file system layout),
		// and CREATE makes that name a mailbox again: a deletion and a
		// creation (RFC 5465 5.4), not changes of the counters (a
		// \Noselect name has none).
		switch {
		case o.Selectable && !n.Selectable:
			evs = append(evs, Event{Kind: Deleted, Mailbox: o})
		case !o.Selectable && n.Selectable:
			evs = append(evs, Event{Kind: Created, Mailbox: n})
		}
		switch {
		case n.Subscribed && !o.Subscribed:
			evs = append(evs, Event{Kind: Subscribed, Mailbox: n})
		case !n.Subscribed && o.Subscribed:
			evs = append(evs, Event{Kind: Unsubscribed, Mailbox: n})
		}
		if !o.Selectable || !n.Selectable {
			if n.Selectable && n.Status.Messages > 0 {
				evs = append(evs, Event{Kind: Messages, Mailbox: n}) // as for a new mailbox
			}
			continue
		}
		switch a, b := o.Status, n.Status; {
		case a.UIDNext == 0:
			// The counters were not known (no mailbox has UIDNEXT 0:
			// its STATUS failed): what they show now is news only if
			// there is mail, as for a new mailbox.
			if b.Messages > 0 {
				evs = append(evs, Event{Kind: Messages, Mailbox: n})
			}
		case a.Messages != b.Messages || a.UIDNext != b.UIDNext || a.UIDValidity != b.UIDValidity:
			evs = append(evs, Event{Kind: Messages, Mailbox: n})
		case a.Unseen != b.Unseen || a.UpModSeq != b.UpModSeq:
			evs = append(evs, Event{Kind: Flags, Mailbox: n})
		}
	}
	return evs
}
