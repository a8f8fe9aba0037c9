package sort

import (
	"context"
	"errors"
	"strings"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// ThreadKeys are what RFC 5256's threading algorithms need of a message,
// taken from the same cached keys SORT uses (one fetch, one record per
// message, one copy of the base-subject and sent-date rules).
type ThreadKeys struct {
	UID uint32
	// Date is the sent date (RFC 5256 section 2.2), Unix seconds.
	Date int64
	// Subject is the base subject (section 2.1), folded with
	// i;unicode-casemap: equal subjects are equal strings.
	Subject string
	// Reply: the subject is a reply or forward.
	Reply bool
	// MessageID and InReplyTo are msg-ids or ""; References the
	// References header's msg-ids in order.
	MessageID, InReplyTo string
	References           []string
}

// ThreadKeys returns the keys of uids (ascending), messages of the
// session's selected mailbox, in UID order, fetching from the upstream
// only those not cached; UIDs the upstream no longer has are left out.
// Like Sort, it may be called from ServeCommand or an OnTagged hook.
func (e *Extension) ThreadKeys(ctx context.Context, s *proxy.Session, uids []uint32) ([]ThreadKeys, error) {
	if e.cache == nil {
		// Not in the session's chain: a caller's wiring error, not the
		// client's; answered NO rather than a nil dereference.
		return nil, errors.New("sort: extension not provisioned (not in the chain)")
	}
	var out []ThreadKeys
	err := e.withKeys(ctx, s, uids, func(msgs []*folded) {
		out = make([]ThreadKeys, len(msgs))
		for i, f := range msgs {
			out[i] = ThreadKeys{UID: f.uid, Date: f.date, Subject: f.subject, Reply: f.reply,
				MessageID: f.msgID, InReplyTo: f.inReplyTo}
			if f.references != "" {
				out[i].References = strings.Split(f.references, " ")
			}
		}
	})
	return out, err
}
