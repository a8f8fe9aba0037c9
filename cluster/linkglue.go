package cluster

import (
	"context"
	"errors"
	"net"

	"github.com/lemonproxy/lemonproxy/proxy"
)

// linkTransport speaks package cluster/link. (Placeholder until the link
// branch is merged.)
type linkTransport struct{ secret []byte }

func (t linkTransport) dial(ctx context.Context, addr, from string, h proxy.Handoff) (net.Conn, replyKind, error) {
	return nil, 0, errors.New("cluster: internal links not built yet")
}

func (t linkTransport) accept(ctx context.Context, conn net.Conn) (linkRequest, error) {
	return nil, errors.New("cluster: internal links not built yet")
}
