package imapurl

import (
	"encoding/base64"
	"unicode/utf16"
	"unicode/utf8"
)

// utf7Enc is modified base64 (RFC 3501 5.1.3): "," instead of "/", no
// padding.
var utf7Enc = base64.NewEncoding("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,").WithPadding(base64.NoPadding)

// WireMailbox returns the URL's mailbox name as an IMAP4rev1 command
// spells it: URLs carry names in UTF-8 (RFC 5092 3.2), IMAP4rev1 servers
// in modified UTF-7 (RFC 3501 5.1.3). An invalid UTF-8 byte is encoded as
// U+FFFD, which no existing mailbox has in its name, so such a URL names
// no mailbox rather than another one.
func (u *URL) WireMailbox() string {
	s := u.Mailbox
	var b []byte
	var run []uint16
	flush := func() {
		if len(run) == 0 {
			return
		}
		raw := make([]byte, 0, 2*len(run))
		for _, r := range run {
			raw = append(raw, byte(r>>8), byte(r))
		}
		b = append(b, '&')
		b = utf7Enc.AppendEncode(b, raw)
		b = append(b, '-')
		run = run[:0]
	}
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		i += n
		if r >= 0x20 && r <= 0x7e {
			flush()
			if r == '&' {
				b = append(b, '&', '-')
			} else {
				b = append(b, byte(r))
			}
			continue
		}
		run = utf16.AppendRune(run, r)
	}
	flush()
	return string(b)
}
