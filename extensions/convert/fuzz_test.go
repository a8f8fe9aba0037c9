package convert

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// FuzzParseRequest: any CONVERT command line is parsed without a panic
// into a request within the limits, or refused; a data item parsed writes
// back as a name that parses into the same item.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`a UID CONVERT 2 ("APPLICATION/PDF") BINARY[3]`,
		`b UID CONVERT 2 ("text/plain" ("charset" "us-ascii" "unknown-character-replacement" "?")) BINARY[3]`,
		`c UID CONVERT 2 ("TEXT/PLAIN" ("CHARSET" "us-ascii")) BINARY[4]<2001.1000>`,
		`d UID CONVERT 2 (NIL ("CHARSET" "utf-8")) (BODY[HEADER] BODY[1.MIME] BODY[2.3.HEADER])`,
		`e UID CONVERT 100 ("IMAGE/JPEG" ("PIX-X" "128" "PIX-Y" "96")) (UID BINARY[2] BODYPARTSTRUCTURE[2] AVAILABLECONVERSIONS[2] BINARY.SIZE[])`,
		`f UID CONVERT 1:* (NIL ({3+}` + "\r\nabc" + ` x)) BINARY[1]`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		segs, err := imapcodec.NewReader(strings.NewReader(line+"\r\n"), imapcodec.Limits{}).ReadSegments(nil)
		if err != nil {
			return
		}
		vals, err := imapcodec.NewParser(segs, imapcodec.Limits{}).Values()
		if err != nil {
			return
		}
		req, err := parseRequest(vals)
		if err != nil {
			if _, ok := err.(*errBad); !ok {
				t.Fatalf("%q: error %T %v", line, err, err)
			}
			return
		}
		if len(req.params) > maxParams || len(req.items) == 0 && !req.uid {
			t.Fatalf("%q: %d params, %d items", line, len(req.params), len(req.items))
		}
		for _, it := range req.items {
			name := it.respName()
			if it.partial {
				name = it.kind + "[" + it.section + "]<" + strconv.FormatInt(it.off, 10) + "." + strconv.FormatInt(it.length, 10) + ">"
			}
			again, err := parseItem(name)
			if err != nil || again != it {
				t.Fatalf("%q: item %+v writes as %q, reads back as %+v %v", line, it, name, again, err)
			}
		}
	})
}

// FuzzConvertHeader: any header converts without a panic, in bounded
// size, and a header without "=?" is left as it is.
func FuzzConvertHeader(f *testing.F) {
	f.Add([]byte("Subject: =?KOI8-R?Q?why encode this?=\r\n\r\n"))
	f.Add([]byte("Subject: =?utf-8*en?B?w6k=?= =?iso-2022-jp?B?GyRCRnxLXBsoQg==?=\r\n"))
	f.Add([]byte("X: =?utf-16?Q?=00a?= =??Q??= =?x?x?x?=\r\n"))
	utf8, _ := lookupCharset("utf-8")
	jis, _ := lookupCharset("iso-2022-jp")
	f.Fuzz(func(t *testing.T, h []byte) {
		out := convertHeader(h, utf8, "utf-8")
		if len(out) > 8*len(h)+64 {
			t.Fatalf("%d bytes became %d", len(h), len(out))
		}
		if !bytes.Contains(h, []byte("=?")) && !bytes.Equal(out, h) {
			t.Fatalf("%q changed to %q", h, out)
		}
		convertHeader(h, jis, "iso-2022-jp")
	})
}
