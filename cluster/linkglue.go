package cluster

import (
	"context"
	"net"

	"github.com/lemonproxy/lemonproxy/cluster/link"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// linkTransport speaks package cluster/link, authenticated by the
// cluster's shared secret.
type linkTransport struct{ secret []byte }

func (t linkTransport) dial(ctx context.Context, addr, from string, h proxy.Handoff) (net.Conn, replyKind, error) {
	conn, rep, err := link.Dial(ctx, addr, t.secret, from, h)
	if err != nil {
		return nil, 0, err
	}
	switch rep.Kind {
	case link.ReplyOK:
		return conn, replyOK, nil
	case link.ReplyNotOwner:
		return nil, replyNotOwner, nil
	default:
		return nil, replyUnavailable, nil
	}
}

func (t linkTransport) accept(ctx context.Context, conn net.Conn) (linkRequest, error) {
	req, err := link.Accept(ctx, conn, t.secret)
	if err != nil {
		return nil, err
	}
	return linkReq{req}, nil
}

type linkReq struct{ r *link.Request }

func (q linkReq) from() string           { return q.r.From }
func (q linkReq) handoff() proxy.Handoff { return q.r.Handoff }

var replyTexts = [...]string{
	replyNotOwner:    "this node does not own the account",
	replyUnavailable: "the account cannot be served on this node now",
}

func (q linkReq) reply(k replyKind) (net.Conn, error) {
	switch k {
	case replyOK:
		return q.r.Reply(link.Reply{Kind: link.ReplyOK})
	case replyNotOwner:
		return q.r.Reply(link.Reply{Kind: link.ReplyNotOwner, Text: replyTexts[k]})
	default:
		return q.r.Reply(link.Reply{Kind: link.ReplyUnavailable, Text: replyTexts[replyUnavailable]})
	}
}
