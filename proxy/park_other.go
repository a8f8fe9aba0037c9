//go:build !unix

package proxy

import "net"

// parkable leaves nc as it is: parking needs a peek at the socket, which
// is written for unix systems only; sessions wait in a read.
func parkable(nc net.Conn) net.Conn { return nc }

// waitReadable is never called: no session has an idleConn here.
func (c *idleConn) waitReadable() {}

// hasInput is never called: no session has an idleConn here.
func (c *idleConn) hasInput() bool { return false }
