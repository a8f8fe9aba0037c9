package conformance

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// binaryAttachment is the decoded attachment of binaryMessage: every byte
// value, NUL, CR and LF included.
func binaryAttachment() []byte {
	b := make([]byte, 3000)
	for i := range b {
		b[i] = byte(i * 7 % 256)
	}
	return b
}

// binaryQPText is the decoded text of binaryMessage's part 1.
const binaryQPText = "Caf\xc3\xa9 = ok soft"

// binaryMessage has a quoted-printable text part (1), a base64 binary
// attachment (2) and, with unknown, a part in an encoding nobody knows
// (3). Only 3516-unknown-cte has that part: Dovecot 2.3 answers
// BINARY.SIZE of any part of such a message with NO [UNKNOWN-CTE].
func binaryMessage(mailbox string, unknown bool) []byte {
	third := ""
	if unknown {
		third = "--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: x-no-such-encoding\r\n\r\n" +
			"abc\r\n"
	}
	enc := base64.StdEncoding.EncodeToString(binaryAttachment())
	var lines strings.Builder
	for len(enc) > 76 {
		lines.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	lines.WriteString(enc + "\r\n")
	return []byte("From: Conformance <conformance@example.org>\r\nTo: Test <test@example.org>\r\n" +
		"Subject: binary\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n" +
		"Message-ID: <" + mailbox + ".binary@conformance.example.org>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n" +
		"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		"Caf=C3=A9 =3D ok=\r\n soft\r\n" +
		"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		lines.String() + third +
		"--b1--\r\n")
}

// binarySetup makes a mailbox holding binaryMessage and selects it.
func (t *T) binarySetup(unknown ...bool) (*Client, error) {
	name := t.Name()
	c, err := t.setupClient()
	if err != nil {
		return nil, err
	}
	if err := createFresh(c, name); err != nil {
		return nil, err
	}
	res, err := c.Append(name, "", binaryMessage(name, len(unknown) > 0 && unknown[0]))
	if err != nil {
		return nil, err
	}
	if !res.OK() {
		return nil, failf("setup: APPEND refused: %s", status(res))
	}
	c, sel, err := t.loginSelect(name, "")
	if err != nil {
		return nil, err
	}
	if !sel.OK() {
		return nil, failf("SELECT failed: %s", status(sel))
	}
	return c, nil
}

// binaryItem runs cmd and returns the value of item from its FETCH
// responses.
func binaryItem(c *Client, cmd, item string) (imapcodec.Value, *Reply, error) {
	res, err := c.Do(cmd)
	if err != nil {
		return nil, res, err
	}
	if !res.OK() {
		return nil, res, nil
	}
	for _, f := range fetches(res.Untagged) {
		if v, ok := f.Items[item]; ok {
			return v, res, nil
		}
	}
	return nil, res, failf("%s: expected a FETCH with %s, got %s", cmd, item, describe(res.Untagged))
}

func binary3516() []*Scenario {
	caps := []string{"BINARY"}
	return []*Scenario{
		{ID: "3516-binary-base64", RFC: 3516, Section: "4.2", Level: Must, Caps: caps,
			Summary: "BINARY.PEEK[2] of a base64 part holding NULs answers the decoded bytes as a literal8",
			Run: func(t *T) error {
				c, err := t.binarySetup()
				if err != nil {
					return err
				}
				v, res, err := binaryItem(c, "FETCH 1 (BINARY.PEEK[2])", "BINARY[2]")
				if err != nil || !res.OK() {
					return firstErr(err, failf("expected OK, got %q", status(res)))
				}
				s, ok := v.(imapcodec.String)
				if !ok || !bytes.Equal(s.Data, binaryAttachment()) {
					return failf("BINARY[2] is not the decoded attachment (%d bytes)", len(s.Data))
				}
				if !s.Binary {
					return failf("decoded data with NUL not sent as a literal8 (~{n})")
				}
				return nil
			}},
		{ID: "3516-binary-qp", RFC: 3516, Section: "4.2", Level: Must, Caps: caps,
			Summary: "BINARY.PEEK[1] of a quoted-printable text part answers the decoded text",
			Run: func(t *T) error {
				c, err := t.binarySetup()
				if err != nil {
					return err
				}
				v, res, err := binaryItem(c, "FETCH 1 (BINARY.PEEK[1])", "BINARY[1]")
				if err != nil || !res.OK() {
					return firstErr(err, failf("expected OK, got %q", status(res)))
				}
				if s, _ := imapcodec.AsString(v); s != binaryQPText {
					return failf("BINARY[1] = %q, want %q", s, binaryQPText)
				}
				return nil
			}},
		{ID: "3516-binary-partial", RFC: 3516, Section: "4.2", Level: Must, Caps: caps,
			Summary: "BINARY.PEEK[2]<o.n> counts in the decoded data and is answered as BINARY[2]<o>",
			Run: func(t *T) error {
				c, err := t.binarySetup()
				if err != nil {
					return err
				}
				v, res, err := binaryItem(c, "FETCH 1 (BINARY.PEEK[2]<1000.100>)", "BINARY[2]<1000>")
				if err != nil || !res.OK() {
					return firstErr(err, failf("expected OK, got %q", status(res)))
				}
				if s, _ := v.(imapcodec.String); !bytes.Equal(s.Data, binaryAttachment()[1000:1100]) {
					return failf("BINARY[2]<1000> is not bytes 1000 to 1099 of the decoded data")
				}
				return nil
			}},
		{ID: "3516-binary-size", RFC: 3516, Section: "4.3", Level: Must, Caps: caps,
			Summary: "BINARY.SIZE[n] is the size of the decoded part",
			Run: func(t *T) error {
				c, err := t.binarySetup()
				if err != nil {
					return err
				}
				res, err := c.Do("FETCH 1 (BINARY.SIZE[2] BINARY.SIZE[1])")
				if err != nil {
					return err
				}
				if !res.OK() {
					return failf("expected OK, got %q", status(res))
				}
				var n2, n1 uint64
				var ok2, ok1 bool
				for _, f := range fetches(res.Untagged) {
					if n, ok := f.Number("BINARY.SIZE[2]"); ok {
						n2, ok2 = n, true
					}
					if n, ok := f.Number("BINARY.SIZE[1]"); ok {
						n1, ok1 = n, true
					}
				}
				if !ok1 || !ok2 || n2 != uint64(len(binaryAttachment())) || n1 != uint64(len(binaryQPText)) {
					return failf("BINARY.SIZE[2] %d, BINARY.SIZE[1] %d, want %d and %d (%s)", n2, n1, len(binaryAttachment()), len(binaryQPText), describe(res.Untagged))
				}
				return nil
			}},
		{ID: "3516-binary-seen", RFC: 3516, Section: "4.2", Level: Must, Caps: caps,
			Summary: "BINARY.PEEK[1] leaves \\Seen alone; BINARY[1] sets it",
			Run: func(t *T) error {
				c, err := t.binarySetup()
				if err != nil {
					return err
				}
				if _, res, err := binaryItem(c, "FETCH 1 (BINARY.PEEK[1])", "BINARY[1]"); err != nil || !res.OK() {
					return firstErr(err, failf("expected OK, got %q", status(res)))
				}
				seen := func() (bool, error) {
					v, _, err := binaryItem(c, "FETCH 1 (FLAGS)", "FLAGS")
					l, _ := v.(imapcodec.List)
					for _, f := range l {
						if a, ok := f.(imapcodec.Atom); ok && strings.EqualFold(string(a), `\Seen`) {
							return true, err
						}
					}
					return false, err
				}
				if s, err := seen(); err != nil || s {
					return firstErr(err, failf("BINARY.PEEK set \\Seen"))
				}
				if _, res, err := binaryItem(c, "FETCH 1 (BINARY[1])", "BINARY[1]"); err != nil || !res.OK() {
					return firstErr(err, failf("expected OK, got %q", status(res)))
				}
				if s, err := seen(); err != nil || !s {
					return firstErr(err, failf("expected \\Seen set by FETCH BINARY[1] (RFC 3516 4.2 as BODY[]), got flags without it"))
				}
				return nil
			}},
		{ID: "3516-append-literal8", RFC: 3516, Section: "4.4", Level: Must, Caps: caps,
			Summary: "APPEND takes a literal8 message with a binary part (NULs, bare LF), and BINARY reads the part back unchanged",
			Run: func(t *T) error {
				name := t.Name()
				c, err := t.setupClient()
				if err != nil {
					return err
				}
				if err := createFresh(c, name); err != nil {
					return err
				}
				att := binaryAttachment()
				msg := "From: Conformance <conformance@example.org>\r\nSubject: literal8\r\n" +
					"Message-ID: <" + name + ".literal8@conformance.example.org>\r\nMIME-Version: 1.0\r\n" +
					"Content-Type: multipart/mixed; boundary=\"b2\"\r\n\r\n" +
					"--b2\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n" +
					"--b2\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n" +
					string(att) + "\r\n--b2--\r\n"
				res, err := appendLiteral8(c, name, []byte(msg))
				if err != nil {
					return err
				}
				if !res.OK() {
					return failf("APPEND with literal8: %q", status(res))
				}
				c, sel, err := t.loginSelect(name, "")
				if err != nil {
					return err
				}
				if !sel.OK() {
					return failf("SELECT failed: %s", status(sel))
				}
				v, res, err := binaryItem(c, "FETCH 1 (BINARY.PEEK[2])", "BINARY[2]")
				if err != nil || !res.OK() {
					return firstErr(err, failf("expected OK, got %q", status(res)))
				}
				if s, _ := v.(imapcodec.String); !bytes.Equal(s.Data, att) {
					return failf("BINARY[2] is not the appended binary part (%d bytes, want %d)", len(s.Data), len(att))
				}
				return nil
			}},
		{ID: "3516-unknown-cte", RFC: 3516, Section: "4.2", Level: Must, Caps: caps,
			Summary: "BINARY of a part in an unknown Content-Transfer-Encoding fails with NO [UNKNOWN-CTE]",
			Run: func(t *T) error {
				c, err := t.binarySetup(true)
				if err != nil {
					return err
				}
				res, err := c.Do("FETCH 1 (BINARY.PEEK[3])")
				if err != nil {
					return err
				}
				if res.Status == nil || res.Status.Name != "NO" || res.Status.Code != "UNKNOWN-CTE" {
					return failf("expected NO [UNKNOWN-CTE], got %q", status(res))
				}
				return nil
			}},
	}
}

// appendLiteral8 is Client.Append with a literal8 (~{n}, RFC 3516 4.4).
func appendLiteral8(c *Client, mailbox string, msg []byte) (*Reply, error) {
	tag := c.NextTag()
	cmd := "APPEND " + quote(mailbox) + " ~{" + strconv.Itoa(len(msg)) + "}"
	if err := c.writeLine(tag + " " + cmd); err != nil {
		return nil, err
	}
	res := &Reply{Cmd: cmd, Tag: tag}
	deadline := time.Now().Add(c.timeout)
	for {
		r, err := c.Next(time.Until(deadline))
		if err != nil {
			return res, fmt.Errorf("APPEND: %w", err)
		}
		if r.Tag == tag {
			res.Status = r
			return res, nil
		}
		if r.Tag == "+" {
			break
		}
		res.Untagged = append(res.Untagged, r)
	}
	c.tr.add(c.name, "C: ", fmt.Sprintf("(%d bytes of binary message)", len(msg)))
	if err := c.write(append(append([]byte(nil), msg...), '\r', '\n')); err != nil {
		return res, err
	}
	more, err := c.Wait(tag, cmd)
	res.Status = more.Status
	res.Untagged = append(res.Untagged, more.Untagged...)
	return res, err
}

// firstErr returns err, or fallback when err is nil.
func firstErr(err, fallback error) error {
	if err != nil {
		return err
	}
	return fallback
}
