//go:build !linux

package imapcodec

import "net"

// awaitQueued does not wait where SO_RCVLOWAT's wake-ups are not known
// (see splicewait_linux.go): the splice takes bytes as they come.
func awaitQueued(c *net.TCPConn, want int64, lowat *int64) (int64, error) { return want, nil }

func resetLowat(c *net.TCPConn, lowat *int64) {}
