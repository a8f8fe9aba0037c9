package casesearch

import (
	"context"
	"errors"
	"fmt"

	"github.com/lemonproxy/lemonproxy/extensions/contextsearch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// matcher re-evaluates an updating context's criteria (RFC 5267 4.3) for
// the messages that changed, with the original substring keys: the
// command the context came from had them replaced by what they matched
// when it ran, which would leave a new message whose subject matches out
// for good. Each Match evaluates the keys over the changed messages (the
// candidates among them, as for a command) and hands the rewritten
// criteria to contextsearch's own matcher, restricted to those messages.
type matcher struct {
	e    *Extension
	prog *program
}

func (m *matcher) Match(ctx context.Context, s *proxy.Session, uids []uint32) ([]uint32, error) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, m.e.cfg.Timeout)
	defer cancel()
	res, err := m.e.evaluate(ctx, s, m.prog, uids)
	if err == nil {
		var segs []imapcodec.Segment
		if segs, err = m.e.rewrite(s, m.prog, res); err == nil {
			var inner contextsearch.Matcher
			if inner, err = contextsearch.NewSearchMatcher(s, m.prog.searchForm(segs)); err == nil {
				return inner.Match(ctx, s, uids)
			}
		}
	}
	switch {
	case errors.Is(err, errLimit) || errors.Is(err, errTooLong) || errors.Is(err, errLiteral):
		// The next batch of changes may be smaller, but a context that
		// passed a limit once is not worth the risk of passing it at
		// every change (RFC 5267 4.3.1 lets a server stop updates).
		err = fmt.Errorf("%w: %w", contextsearch.ErrCannotRecheck, err)
	case errors.Is(ctx.Err(), context.DeadlineExceeded) && parent.Err() == nil:
		err = errTimeout
	}
	return nil, err
}
