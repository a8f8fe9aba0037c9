package convert_test

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/goleak"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/japanese"
	"golang.org/x/text/encoding/unicode"

	"github.com/lemonproxy/lemonproxy/extensions/binary"
	"github.com/lemonproxy/lemonproxy/extensions/compress"
	"github.com/lemonproxy/lemonproxy/extensions/condstore"
	"github.com/lemonproxy/lemonproxy/extensions/convert"
	"github.com/lemonproxy/lemonproxy/internal/dovecottest"
	"github.com/lemonproxy/lemonproxy/internal/imaptest"
	"github.com/lemonproxy/lemonproxy/internal/memupstream"
	"github.com/lemonproxy/lemonproxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func b64(b []byte) string {
	s := base64.StdEncoding.EncodeToString(b)
	var out strings.Builder
	for len(s) > 76 {
		out.WriteString(s[:76] + "\r\n")
		s = s[76:]
	}
	return out.String() + s + "\r\n"
}

// longText is text over 2135 bytes (RFC 5259's c001 reads bytes 2001 to
// 3000 of a part) in windows-1252, with characters ISO-8859-1 lacks.
var longText = strings.Repeat("\u201cQuoted\u201d costs 5 \u20ac.\n", 120)

func win1252(s string) []byte {
	out, err := charmap.Windows1252.NewEncoder().Bytes([]byte(s))
	if err != nil {
		panic(err)
	}
	return out
}

// The messages every upstream gets, in this order.
var (
	// msg1: a plain UTF-8 text.
	msg1 = "From: a@example.org\r\nSubject: one\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
	// msg2: the message RFC 5259's examples use as number 2.
	msg2 = "From: a@example.org\r\nSubject: two\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"B2\"\r\n\r\n" +
		"--B2\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		"Gr=C3=BC=C3=9Fe\r\n" +
		"--B2\r\nContent-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		b64(jpeg) +
		"--B2\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		"Caf=E9 cr=E8me =3D ok=\r\n soft\r\n" +
		"--B2\r\nContent-Type: text/plain; charset=windows-1252\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		b64(win1252(longText)) +
		"--B2\r\nContent-Type: application/x-foo\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n" +
		"begin 644 x\r\n`\r\nend\r\n" +
		"--B2--\r\n"
	// msg3: RFC 5259's D001 header.
	msg3Header = "Date: Mon, 20 Apr 2007 20:05:43 +0200\r\n" +
		"From: Peter <peter@siroe.example.com>\r\n" +
		"To: Alexey <alexey@siroe.example.com>\r\n" +
		"Subject: =?KOI8-R?Q?why encode this?=\r\n\r\n"
	msg3 = msg3Header + "body\r\n"
	// msg4: Japanese in Shift_JIS, base64, bare LF.
	msg4 = "From: a@example.org\r\nSubject: sjis\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=Shift_JIS\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		b64(mustBytes(japanese.ShiftJIS.NewEncoder().Bytes([]byte(japaneseText))))
	// msg5: UTF-16 with a byte order mark, base64.
	msg5 = "From: a@example.org\r\nSubject: utf16\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=UTF-16\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		b64(mustBytes(unicode.UTF16(unicode.BigEndian, unicode.UseBOM).NewEncoder().Bytes([]byte("Z\u00fcrich \u2603\n"))))
	// msg6: ISO-2022-JP, 7bit, with an encoded-word in ISO-2022-JP.
	msg6 = "From: a@example.org\r\nSubject: =?ISO-2022-JP?B?" +
		base64.StdEncoding.EncodeToString(mustBytes(japanese.ISO2022JP.NewEncoder().Bytes([]byte("日本")))) + "?=\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=ISO-2022-JP\r\n\r\n" +
		string(mustBytes(japanese.ISO2022JP.NewEncoder().Bytes([]byte("日本語のテキスト\r\n"))))
)

const japaneseText = "こんにちは、世界。\n二行目\n"

var jpeg = []byte("\xff\xd8\xff\xe0\x00\x10JFIF\x00fake image data\x00\xff\xd9")

func mustBytes(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

var messages = []string{msg1, msg2, msg3, msg4, msg5, msg6}

// env is a proxy with CONVERT in front of an upstream holding messages.
type env struct {
	addr, user, pass string
	ext              *convert.Extension
}

func memEnv(t *testing.T) *env {
	t.Helper()
	up, err := memupstream.Start(memupstream.Options{Caps: []imap.Cap{imap.CapLiteralPlus, imap.CapUIDPlus}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if err := up.AddUser("alice", "secret"); err != nil {
		t.Fatal(err)
	}
	for _, m := range messages {
		if err := up.Append("alice", "INBOX", nil, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	return startProxy(t, up.Addr, "alice", "secret")
}

func dovecotEnv(t *testing.T, p dovecottest.Profile) *env {
	t.Helper()
	d := dovecottest.Start(t, p)
	for _, m := range messages {
		d.Append(t, "alice", "alicepass", "INBOX", nil, []byte(m))
	}
	return startProxy(t, d.Addr, "alice", "alicepass")
}

func startProxy(t *testing.T, addr, user, pass string) *env {
	ext := convert.New()
	p := imaptest.StartProxy(t, addr, proxy.Config{
		Extensions: []proxy.Extension{compress.New(), condstore.New(), binary.New(), ext},
	})
	return &env{addr: p.Addr, user: user, pass: pass, ext: ext}
}

func (e *env) login(t *testing.T) *imaptest.Client {
	c := imaptest.Login(t, e.addr, e.user, e.pass)
	c.MustOK("SELECT INBOX")
	return c
}

// run sends a command with the client's own tag and returns every
// response, the tagged one last.
func run(c *imaptest.Client, tag, cmd string) []string {
	c.Write(tag + " " + cmd + "\r\n")
	return c.ReadUntilTagged(tag)
}

func lit(data string) string { return fmt.Sprintf("{%d}\r\n%s", len(data), data) }

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

// vector is one exchange: the command and the exact responses.
type vector struct {
	tag, cmd string
	want     []string
}

// vectors are RFC 5259's examples (sections 5.1, 6, 7, 8, 9), restated for
// the conversions the proxy has: where the RFC converts to a type the
// proxy cannot make (PDF, a rescaled JPEG, text/html to text/plain), the
// answer is the RFC's own ERROR phrase for a conversion that is not
// possible. The literal sizes and data follow from the messages above.
func vectors() []vector {
	latin := "Café crème = ok soft" // the CRLF before a boundary is the boundary's
	long := crlf(longText)
	return []vector{
		// 3.1
		{"a000", "CAPABILITY", nil}, // checked separately (order is free)
		// 5.1: the mandatory text/plain to text/plain with its parameters.
		{"a", `CONVERSIONS "text/plain" "text/plain"`, []string{
			`* CONVERSION "text/plain" "text/plain" ("charset" "unknown-character-replacement")`,
			`a OK CONVERSIONS completed.`}},
		{"a2", `CONVERSIONS "image/gif" "image/jpeg"`, []string{`a2 OK CONVERSIONS completed.`}},
		{"b", `CONVERSIONS "image/gif" "*"`, []string{
			`* CONVERSION "image/gif" "image/gif"`, `b OK CONVERSIONS completed.`}},
		{"d", `CONVERSIONS "image/*" "text/*"`, []string{`d OK CONVERSIONS completed.`}},
		{"d2", `CONVERSIONS "text/*" "*"`, []string{
			`* CONVERSION "text/plain" "text/plain" ("charset" "unknown-character-replacement")`,
			`* CONVERSION "text/html" "text/html" ("charset" "unknown-character-replacement")`,
			`* CONVERSION "text/css" "text/css" ("charset" "unknown-character-replacement")`,
			`* CONVERSION "text/csv" "text/csv" ("charset" "unknown-character-replacement")`,
			`* CONVERSION "text/enriched" "text/enriched" ("charset" "unknown-character-replacement")`,
			`* CONVERSION "text/xml" "text/xml" ("charset" "unknown-character-replacement")`,
			`d2 OK CONVERSIONS completed.`}},
		{"d3", `CONVERSIONS "multipart/*" "*"`, []string{
			`* CONVERSION "multipart/alternative" "multipart/alternative"`,
			`* CONVERSION "multipart/mixed" "multipart/mixed"`,
			`* CONVERSION "multipart/related" "multipart/related"`,
			`d3 OK CONVERSIONS completed.`}},
		{"d4", `CONVERSIONS text/plain`, []string{`d4 BAD Error in IMAP command CONVERSIONS: CONVERSIONS takes a source and a target media type.`}},
		// 6: a conversion to PDF, which the proxy cannot make.
		{"a001", `CONVERT 2 ("APPLICATION/PDF") BINARY[3]`, []string{
			`* 2 CONVERTED (TAG "a001") (BINARY[3] (ERROR "Cannot convert text/plain to application/pdf" BADPARAMETERS "text/plain" "APPLICATION/PDF"))`,
			`a001 NO All conversions failed.`}},
		// 6: us-ascii cannot hold the part's characters.
		{"b001", `CONVERT 2 ("text/plain" ("charset" "us-ascii")) BINARY[3]`, []string{
			`* 2 CONVERTED (TAG "b001") (BINARY[3] (ERROR "Source text has characters not in us-ascii" BADPARAMETERS "text/plain" "text/plain" ("charset" "us-ascii")))`,
			`b001 NO All conversions failed.`}},
		{"b001", `CONVERT 2 ("text/plain" ("charset" "us-ascii" "unknown-character-replacement" "?")) BINARY[3]`, []string{
			`* 2 CONVERTED (TAG "b001") (BINARY[3] ` + lit("Caf? cr?me = ok soft") + `)`,
			`b001 OK CONVERT completed.`}},
		// 6: BINARY.SIZE, then a partial.
		{"c000", `CONVERT 2 ("TEXT/PLAIN" ("CHARSET" "utf-8")) BINARY.SIZE[4]`, []string{
			fmt.Sprintf(`* 2 CONVERTED (TAG "c000") (BINARY.SIZE[4] %d)`, len(long)),
			`c000 OK CONVERT completed.`}},
		{"c001", `CONVERT 2 ("TEXT/PLAIN" ("CHARSET" "utf-8")) BINARY[4]<2001.1000>`, []string{
			`* 2 CONVERTED (TAG "c001") (BINARY[4]<2001> ` + lit(long[2001:3001]) + `)`,
			`c001 OK CONVERT completed.`}},
		// 6: a header's encoded-words in UTF-8. RFC 5259's answer keeps the
		// spaces of its encoded-word, which RFC 2047 forbids there; the
		// proxy writes "_", of the same length (157 bytes).
		{"D002", `CONVERT 3 (NIL ("CHARSET" "utf-8")) BODY[HEADER]`, []string{
			`* 3 CONVERTED (TAG "D002") (BODY[HEADER] ` + lit(strings.Replace(msg3Header, "=?KOI8-R?Q?why encode this?=", "=?UTF-8?Q?why_encode_this?=", 1)) + `)`,
			`D002 OK CONVERT completed.`}},
		{"D003", `CONVERT 3 (NIL) BODY[HEADER]`, []string{
			`D003 BAD Error in IMAP command CONVERT: CHARSET is required to convert a header.`}},
		{"D004", `CONVERT 3 ("text/plain" ("CHARSET" "utf-8")) BODY[HEADER]`, []string{
			`D004 BAD Error in IMAP command CONVERT: BODY[HEADER] takes the default conversion (NIL), not a media type.`}},
		// 7: image parameters the proxy does not know.
		{"e001", `UID CONVERT 2 ("IMAGE/JPEG" ("PIX-X" "128" "PIX-Y" "96")) BINARY[2]`, []string{
			`* 2 CONVERTED (TAG "e001") (UID 2 BINARY[2] (ERROR "Conversion parameters not valid for image/jpeg" BADPARAMETERS "image/jpeg" "IMAGE/JPEG" ("PIX-X" "128" "PIX-Y" "96")))`,
			`e001 NO All conversions failed.`}},
		// 8.2: BODYPARTSTRUCTURE before BINARY, as asked.
		{"e002", `CONVERT 2 (NIL) (BODYPARTSTRUCTURE[2] BINARY[2])`, []string{
			fmt.Sprintf(`* 2 CONVERTED (TAG "e002") (BODYPARTSTRUCTURE[2] ("IMAGE" "JPEG" NIL NIL NIL "BINARY" %d) BINARY[2] ~{%d}`+"\r\n%s)", len(jpeg), len(jpeg), jpeg),
			`e002 OK CONVERT completed.`}},
		{"e003", `CONVERT 2 ("text/plain" ("charset" "utf-8")) (BODYPARTSTRUCTURE[3] BINARY[3])`, []string{
			fmt.Sprintf(`* 2 CONVERTED (TAG "e003") (BODYPARTSTRUCTURE[3] ("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "8BIT" %d 1) BINARY[3] %s)`, len(latin), lit(latin)),
			`e003 OK CONVERT completed.`}},
		// 8.4
		{"f001", `CONVERT 2 (NIL) (AVAILABLECONVERSIONS[2])`, []string{
			`* 2 CONVERTED (TAG "f001") (AVAILABLECONVERSIONS[2] (("image/jpeg")))`,
			`f001 OK CONVERT completed.`}},
		// 9: a missing part is BADPARAMETERS with a NIL source.
		{"b004", `CONVERT 2 ("text/plain" ("charset" "utf-8")) (BINARY[9] BINARY[3])`, []string{
			`* 2 CONVERTED (TAG "b004") (BINARY[9] (ERROR "No such body part" BADPARAMETERS NIL "text/plain" ("charset" "utf-8")) BINARY[3] ` + lit(latin) + `)`,
			`b004 OK CONVERT completed.`}},
		{"b005", `CONVERT 2 ("TEXT/PLAIN" (CHARSET "US-ASCII" UNKNOWN-CHARACTER-REPLACEMENT "<badchar>")) BINARY[3]`, []string{
			`* 2 CONVERTED (TAG "b005") (BINARY[3] (ERROR "unknown-character-replacement must be 1 to 4 bytes representable in US-ASCII" BADPARAMETERS "text/plain" "TEXT/PLAIN" ("UNKNOWN-CHARACTER-REPLACEMENT" "<badchar>")))`,
			`b005 NO All conversions failed.`}},
		// An encoding the proxy cannot decode.
		{"b006", `CONVERT 2 (NIL) BINARY[5]`, []string{
			`* 2 CONVERTED (TAG "b006") (BINARY[5] (ERROR "Unknown Content-Transfer-Encoding x-uuencode" BADPARAMETERS "application/x-foo" "application/x-foo"))`,
			`b006 NO All conversions failed.`}},
		// Conversions to UTF-8.
		{"j1", `CONVERT 4 ("text/plain" ("charset" "UTF-8")) BINARY[1]`, []string{
			`* 4 CONVERTED (TAG "j1") (BINARY[1] ` + lit(crlf(japaneseText)) + `)`, `j1 OK CONVERT completed.`}},
		{"j2", `CONVERT 5 ("text/plain" ("charset" "UTF-8")) BINARY[1]`, []string{
			`* 5 CONVERTED (TAG "j2") (BINARY[1] ` + lit("Z\u00fcrich \u2603\r\n") + `)`, `j2 OK CONVERT completed.`}},
		{"j3", `UID CONVERT 6 ("text/plain" ("charset" "utf-8")) (BINARY[1] BINARY.SIZE[1])`, []string{
			`* 6 CONVERTED (TAG "j3") (UID 6 BINARY[1] ` + lit("日本語のテキスト\r\n") + ` BINARY.SIZE[1] 26)`, `j3 OK UID CONVERT completed.`}},
		{"j4", `CONVERT 6 (NIL ("charset" "utf-8")) BODY[HEADER]`, []string{
			`* 6 CONVERTED (TAG "j4") (BODY[HEADER] ` + lit(strings.Replace(msg6[:strings.Index(msg6, "\r\n\r\n")+4], msg6[len("From: a@example.org\r\nSubject: "):strings.Index(msg6, "?=")+2], "=?UTF-8?Q?=E6=97=A5=E6=9C=AC?=", 1)) + `)`,
			`j4 OK CONVERT completed.`}},
		// And from UTF-8 into another charset.
		{"j5", `CONVERT 2 ("text/plain" ("charset" "iso-8859-1")) BINARY[1]`, []string{
			`* 2 CONVERTED (TAG "j5") (BINARY[1] ` + lit("Gr\xfc\xdfe") + `)`, `j5 OK CONVERT completed.`}},
		// windows-1252's quotes and euro sign are not in ISO-8859-15... the
		// euro is, the quotes are not.
		{"j6", `CONVERT 2 ("text/plain" ("charset" "iso-8859-15" "unknown-character-replacement" "\"")) BINARY.SIZE[4]`, []string{
			fmt.Sprintf(`* 2 CONVERTED (TAG "j6") (BINARY.SIZE[4] %d)`, len(crlf(strings.Repeat("\"Quoted\" costs 5 \xa4.\n", 120)))),
			`j6 OK CONVERT completed.`}},
		// Syntax.
		{"s1", `CONVERT 2 ("text/plain" ("charset")) BINARY[1]`, []string{`s1 BAD Error in IMAP command CONVERT: malformed transcoding parameters.`}},
		{"s2", `CONVERT 2 ("text plain") BINARY[1]`, []string{`s2 BAD Error in IMAP command CONVERT: malformed media type.`}},
		{"s3", `CONVERT 2 (NIL) BINARY[1.0]`, []string{`s3 BAD Error in IMAP command CONVERT: unknown or malformed CONVERT data item BINARY[1.0].`}},
		{"s4", `CONVERT 2 (NIL) BODY[TEXT]`, []string{`s4 BAD Error in IMAP command CONVERT: unknown or malformed CONVERT data item BODY[TEXT].`}},
	}
}

func checkVectors(t *testing.T, e *env) {
	c := e.login(t)
	caps := " " + strings.Join(c.MustOK("CAPABILITY"), " ") + " "
	if !strings.Contains(caps, " CONVERT ") || !strings.Contains(caps, " BINARY ") {
		t.Fatalf("CONVERT and BINARY not both advertised: %s", caps)
	}
	for _, v := range vectors() {
		if v.want == nil {
			continue
		}
		got := run(c, v.tag, v.cmd)
		if strings.Join(got, "\n") != strings.Join(v.want, "\n") {
			t.Errorf("%s %s:\n got %q\nwant %q", v.tag, v.cmd, got, v.want)
		}
	}
	// CONVERT never sets \Seen (RFC 5259 6).
	if f := c.MustOK("FETCH 2 (FLAGS)"); strings.Contains(f[0], `\Seen`) {
		t.Errorf("CONVERT set \\Seen: %q", f)
	}
}

func TestRFC5259Vectors(t *testing.T) { checkVectors(t, memEnv(t)) }

func TestDovecotLegacy(t *testing.T) { checkVectors(t, dovecotEnv(t, dovecottest.Legacy)) }

// TestDovecotFull: Dovecot has BINARY but not CONVERT, which is
// synthesized in front of it too.
func TestDovecotFull(t *testing.T) { checkVectors(t, dovecotEnv(t, dovecottest.Full)) }

// TestLimits: RFC 5259 8.5's answers to too many messages or parts.
func TestLimits(t *testing.T) {
	e := memEnv(t)
	convert.SetLimits(e.ext, 1, 1)
	c := e.login(t)
	for _, v := range []vector{
		{"g001", `CONVERT 1:* ("text/plain" ("charset" "us-ascii")) BINARY[3]`, []string{
			`g001 NO [MAXCONVERTMESSAGES 1] At most 1 messages can be converted at once.`}},
		{"h001", `CONVERT 1 ("text/plain" ("charset" "us-ascii")) (BINARY[1] BINARY[2])`, []string{
			`h001 NO [MAXCONVERTPARTS 1] At most 1 body parts can be converted at once.`}},
		{"h002", `UID CONVERT 1 ("text/plain" ("charset" "us-ascii")) BINARY[1]`, []string{
			`* 1 CONVERTED (TAG "h002") (UID 1 BINARY[1] ` + lit("hello\r\n") + `)`, `h002 OK UID CONVERT completed.`}},
	} {
		got := run(c, v.tag, v.cmd)
		if strings.Join(got, "\n") != strings.Join(v.want, "\n") {
			t.Errorf("%s:\n got %q\nwant %q", v.tag, got, v.want)
		}
	}
}

// TestCompressCondstore: CONVERT through COMPRESS with CONDSTORE enabled.
func TestCompressCondstore(t *testing.T) {
	e := memEnv(t)
	c := imaptest.Login(t, e.addr, e.user, e.pass)
	c.Compress()
	c.MustOK("ENABLE CONDSTORE")
	c.MustOK("SELECT INBOX")
	got := run(c, "z1", `CONVERT 2 ("text/plain" ("charset" "utf-8")) BINARY[3]`)
	want := []string{`* 2 CONVERTED (TAG "z1") (BINARY[3] ` + lit("Café crème = ok soft") + `)`, `z1 OK CONVERT completed.`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

// TestNotSelected: CONVERT needs a selected mailbox; CONVERSIONS does not.
func TestNotSelected(t *testing.T) {
	e := memEnv(t)
	c := imaptest.Login(t, e.addr, e.user, e.pass)
	if got := run(c, "n1", `CONVERT 1 (NIL) BINARY[1]`); len(got) != 1 || got[0] != "n1 BAD No mailbox selected." {
		t.Fatalf("%q", got)
	}
	if got := run(c, "n2", `CONVERSIONS "text/csv" "text/csv"`); len(got) != 2 || got[1] != "n2 OK CONVERSIONS completed." {
		t.Fatalf("%q", got)
	}
}

// TestExpungeHeld: CONVERT's sequence numbers are the client's view
// before an expunge it has not been told of, and no EXPUNGE comes during
// it (RFC 5259 6); the expunge is reported after.
func TestExpungeHeld(t *testing.T) {
	e := memEnv(t)
	c := e.login(t)
	other := e.login(t)
	other.MustOK(`STORE 1 +FLAGS.SILENT (\Deleted)`)
	other.MustOK("EXPUNGE")
	got := run(c, "x1", `CONVERT 2 ("text/plain" ("charset" "iso-8859-1")) BINARY[1]`)
	want := []string{`* 2 CONVERTED (TAG "x1") (BINARY[1] ` + lit("Gr\xfc\xdfe") + `)`, `x1 OK CONVERT completed.`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	// UID CONVERT may report it.
	got = run(c, "x2", `UID CONVERT 2 (NIL) BINARY.SIZE[1]`)
	if strings.Join(got, "\n") != "* 1 EXPUNGE\n* 1 CONVERTED (TAG \"x2\") (UID 2 BINARY.SIZE[1] 7)\nx2 OK UID CONVERT completed." {
		t.Fatalf("after the expunge: %q", got)
	}
}
