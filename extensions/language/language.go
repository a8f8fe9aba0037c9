// Package language gives every session the LANGUAGE command of RFC 5255
// section 3, with the one language the proxy speaks: i-default (RFC 2277's
// default, English text in US-ASCII), which the RFC requires of every
// server that advertises LANGUAGE.
//
// The command is always the proxy's, in every state, even over an upstream
// that has LANGUAGE: the language is a property of a connection, and a
// session's upstream connections are pooled (the core never relays
// LANGUAGE), while most of what a client reads (tagged answers of
// synthesized commands, BYE, login failures) is the proxy's own text
// anyway. No NAMESPACE response follows: with one language there is no
// translated namespace prefix to announce (RFC 5255 section 3.4 makes it
// optional).
//
//	LANGUAGE                  * LANGUAGE (i-default), OK
//	LANGUAGE range...         the first range (RFC 4647 basic filtering:
//	                          "*", "default", "i", "i-default") that
//	                          matches i-default: * LANGUAGE (i-default), OK;
//	                          none matches: NO, the language unchanged.
package language

import (
	"context"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// maxRanges bounds the arguments of one LANGUAGE command.
const maxRanges = 64

// Extension implements LANGUAGE.
type Extension struct{}

// New returns the extension.
func New() *Extension { return &Extension{} }

// Name identifies the extension.
func (*Extension) Name() string { return "language" }

// Capabilities advertises LANGUAGE in every state: RFC 5255 lets a client
// choose the language before it logs in.
func (*Extension) Capabilities(proxy.State, upstream.Caps) []string { return []string{"LANGUAGE"} }

// Commands names LANGUAGE.
func (*Extension) Commands() []string { return []string{"LANGUAGE"} }

// ServeCommand answers LANGUAGE.
func (*Extension) ServeCommand(_ context.Context, x *proxy.Exchange, _ proxy.Next) error {
	p := x.Command().Args
	var ranges []string
	for !p.AtEnd() {
		if p.SP() != nil {
			return x.Reply("BAD", "", "Error in IMAP command LANGUAGE: bad arguments.")
		}
		r, err := p.AString()
		if err != nil || r == "" {
			return x.Reply("BAD", "", "Error in IMAP command LANGUAGE: bad language range.")
		}
		if len(ranges) == maxRanges {
			return x.Reply("BAD", "", "Error in IMAP command LANGUAGE: too many language ranges.")
		}
		ranges = append(ranges, r)
	}
	s := x.Session()
	if len(ranges) == 0 {
		s.Write([]byte("* LANGUAGE (i-default)\r\n"))
		return x.Reply("OK", "", "Supported languages have been enumerated.")
	}
	for _, r := range ranges {
		if matches(r) {
			s.Write([]byte("* LANGUAGE (i-default)\r\n"))
			return x.Reply("OK", "", "Language changed.")
		}
	}
	return x.Reply("NO", "", "Unsupported language "+sanitize(ranges[0])+".")
}

// matches reports whether a language range selects i-default: RFC 4647
// 3.3.1's basic filtering (the range is the tag or a prefix of it ending
// at a hyphen, "*" matches anything), and RFC 5255's "default", the
// administrator's preferred language.
func matches(r string) bool {
	r = strings.ToLower(r)
	return r == "*" || r == "default" || r == "i-default" || r == "i"
}

// sanitize keeps a client's range printable in a response text.
func sanitize(s string) string {
	b := imapcodec.AppendQuoted(nil, s)
	if len(b) > 64 {
		b = append(b[:60], "...\""...)
	}
	return string(b)
}
