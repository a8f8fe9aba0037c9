//go:build !unix

package upstream

import "net"

type sockState int

const (
	socketIdle sockState = iota
	socketData
	socketClosed
)

// socketState cannot peek without blocking here; Alive falls back to a
// short read deadline.
func socketState(net.Conn) sockState { return socketData }
