//go:build !linux

package proxy

import "net"

// setCork does nothing where TCP_CORK is not known (see cork_linux.go).
func setCork(*net.TCPConn, bool) {}
