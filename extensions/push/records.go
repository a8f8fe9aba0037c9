package push

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The records push keeps per account in the account data store
// (proxy.Services.Data), under its prefix "push/":
//
//	push/r/<channel> NUL <id>           a Registration (JSON)
//	push/q/<channel> NUL <id> NUL <seq> a pending push to that registration (JSON; seq: 16 hex digits, ascending)
//	push/m/<mailbox>                    the account's cursor in a mailbox: UIDVALIDITY and the UIDNEXT already announced (JSON)
//	push/c                              the account's sealed credentials (see seal.go), where the operator chose them
//
// A registration, its pending pushes and the cursors and credentials of
// the account are written together, in one atomic step, so a crash leaves
// either all of a change or none of it. Nothing push keeps is a cache:
// registrations exist nowhere else, and a pending push is one the device
// has not had yet.

// Prefix is the extension's key prefix in the account data store.
const Prefix = "push/"

const (
	regPrefix     = Prefix + "r/"
	pendingPrefix = Prefix + "q/"
	cursorPrefix  = Prefix + "m/"
	credKey       = Prefix + "c"
)

func regKey(channel, id string) string { return regPrefix + channel + "\x00" + id }

// pendingRegPrefix is the key prefix of a registration's pending pushes.
func pendingRegPrefix(channel, id string) string {
	return pendingPrefix + channel + "\x00" + id + "\x00"
}

func pendingKey(channel, id string, seq uint64) string {
	return pendingRegPrefix(channel, id) + fmt.Sprintf("%016x", seq)
}

func cursorKey(mailbox string) string { return cursorPrefix + mailbox }

// parseRegKey splits a registration key (without regPrefix).
func parseRegKey(rest string) (channel, id string, ok bool) {
	return strings.Cut(rest, "\x00")
}

// parsePendingKey splits a pending push's key (without pendingPrefix).
func parsePendingKey(rest string) (channel, id string, seq uint64, ok bool) {
	channel, rest, ok1 := strings.Cut(rest, "\x00")
	id, hex, ok2 := strings.Cut(rest, "\x00")
	if !ok1 || !ok2 || len(hex) != 16 {
		return "", "", 0, false
	}
	seq, err := strconv.ParseUint(hex, 16, 64)
	return channel, id, seq, err == nil
}

// Bounds of what a registration may hold: a channel checks its own data
// further (a token's syntax, an endpoint's URL).
const (
	MaxChannelName = 32
	MaxID          = 128
	MaxData        = 8 << 10
	MaxMailboxes   = 16
	MaxMailboxName = 1024
)

// checkRegistration refuses what the store's keys or the limits cannot
// hold: a channel name of letters, digits and '-'; an ID of printable
// ASCII; data within MaxData; mailbox names valid UTF-8 without NUL, CR
// or LF.
func checkRegistration(r Registration) error {
	if r.Channel == "" || len(r.Channel) > MaxChannelName {
		return fmt.Errorf("push: channel name %q", r.Channel)
	}
	for _, c := range []byte(r.Channel) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("push: channel name %q", r.Channel)
		}
	}
	if r.ID == "" || len(r.ID) > MaxID {
		return fmt.Errorf("push: registration ID of %d bytes", len(r.ID))
	}
	for _, c := range []byte(r.ID) {
		if c <= ' ' || c > '~' {
			return errors.New("push: registration ID with a byte that is not printable ASCII")
		}
	}
	if len(r.Data) > MaxData {
		return fmt.Errorf("push: registration data of %d bytes (at most %d)", len(r.Data), MaxData)
	}
	if len(r.Mailboxes) > MaxMailboxes {
		return fmt.Errorf("push: %d mailboxes (at most %d)", len(r.Mailboxes), MaxMailboxes)
	}
	for _, m := range r.Mailboxes {
		if m == "" || len(m) > MaxMailboxName || !utf8.ValidString(m) || strings.ContainsAny(m, "\x00\r\n") {
			return fmt.Errorf("push: mailbox name %q", m)
		}
	}
	return nil
}

// regRecord is a Registration as stored.
type regRecord struct {
	Channel   string    `json:"channel"`
	ID        string    `json:"id"`
	Data      []byte    `json:"data"`
	Mailboxes []string  `json:"mailboxes,omitempty"`
	Created   time.Time `json:"created"`
}

func encodeReg(r Registration) []byte {
	b, _ := json.Marshal(regRecord(r)) // cannot fail: plain types
	return b
}

func decodeReg(b []byte) (Registration, error) {
	var r regRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return Registration{}, fmt.Errorf("push: registration record: %w", err)
	}
	reg := Registration(r)
	if err := checkRegistration(reg); err != nil {
		return Registration{}, fmt.Errorf("push: registration record: %w", err)
	}
	return reg, nil
}

// pending is a push waiting for delivery, as stored.
type pending struct {
	Event
	// First is when the push was first queued: it is given up
	// Config.GiveUp after that.
	First time.Time `json:"first"`
	// Attempts counts the failed deliveries so far (in memory: the
	// stored record keeps the count it was written with).
	Attempts int `json:"attempts"`
}

func encodePending(p pending) []byte {
	b, _ := json.Marshal(p)
	return b
}

func decodePending(b []byte) (pending, error) {
	var p pending
	if err := json.Unmarshal(b, &p); err != nil {
		return pending{}, fmt.Errorf("push: pending push record: %w", err)
	}
	if p.Mailbox == "" || p.First.IsZero() || p.Attempts < 0 {
		return pending{}, errors.New("push: pending push record incomplete")
	}
	return p, nil
}

// cursor is how far an account's mailbox has been announced.
type cursor struct {
	UIDValidity uint32 `json:"uidvalidity"`
	// UIDNext is the UIDNEXT up to which new messages were announced
	// (or were there when watching began).
	UIDNext uint32 `json:"uidnext"`
}

func encodeCursor(c cursor) []byte {
	b, _ := json.Marshal(c)
	return b
}

func decodeCursor(b []byte) (cursor, error) {
	var c cursor
	if err := json.Unmarshal(b, &c); err != nil {
		return cursor{}, fmt.Errorf("push: cursor record: %w", err)
	}
	return c, nil
}
