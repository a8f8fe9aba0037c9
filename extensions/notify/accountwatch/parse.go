package accountwatch

import (
	"fmt"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/internal/listresp"
	"github.com/lemonproxy/lemonproxy/extensions/internal/statusresp"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// parseList parses "* LIST (attrs) delim name [extended]".
func parseList(r *upstream.Response) (Mailbox, error) {
	e, err := listresp.Parse(r.Segments)
	if err != nil {
		return Mailbox{}, fmt.Errorf("accountwatch: %w", err)
	}
	name, delim := e.Name, e.Delim
	attrs := e.Attrs
	if strings.EqualFold(name, "INBOX") {
		name = "INBOX"
	}
	b := Mailbox{Name: name, Delim: delim, Selectable: true}
	for _, s := range attrs {
		switch strings.ToLower(s) {
		case `\noselect`, `\nonexistent`:
			b.Selectable = false
		case `\subscribed`, `\marked`, `\unmarked`:
			continue // per connection or reported separately
		}
		b.Attrs = append(b.Attrs, s)
	}
	return b, nil
}

// parseStatus parses "* STATUS name (item n ...)".
func parseStatus(r *upstream.Response) (string, *Status, error) {
	name, items, err := statusresp.Parse(r.Segments)
	if err != nil {
		return "", nil, fmt.Errorf("accountwatch: %w", err)
	}
	if v, ok := items["UIDVALIDITY"]; ok && v == 0 {
		// No mailbox has UIDVALIDITY 0 (RFC 3501 9, nz-number):
		// Dovecot answers so for a mailbox it is deleting, its messages
		// and UIDVALIDITY gone and its name not yet \Noselect. Taken
		// for the mailbox's counters, the change of UIDVALIDITY told
		// its clients of new messages before the deletion.
		return "", nil, fmt.Errorf("accountwatch: STATUS of %q with UIDVALIDITY 0: not a mailbox's", name)
	}
	return name, &Status{
		Messages:    uint32(items["MESSAGES"]),
		UIDNext:     uint32(items["UIDNEXT"]),
		UIDValidity: uint32(items["UIDVALIDITY"]),
		Unseen:      uint32(items["UNSEEN"]),
		UpModSeq:    items["HIGHESTMODSEQ"],
	}, nil
}
