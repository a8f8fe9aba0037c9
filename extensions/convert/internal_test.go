package convert

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"strings"
	"testing"

	"golang.org/x/text/encoding/japanese"
	"golang.org/x/text/encoding/unicode"
)

// TestTranscode converts text of each charset to UTF-8 (and back where
// the target can hold it): bare LF becomes CRLF, lines are counted.
func TestTranscode(t *testing.T) {
	for _, tc := range []struct {
		from, to string
		in       []byte
		want     string
		lines    int64
	}{
		{"ISO-8859-1", "utf-8", []byte("Caf\xe9\ncr\xe8me\r\n\x80"), "Café\r\ncrème\r\n\u0080", 2},
		{"latin1", "UTF-8", []byte("\xff"), "ÿ", 0},
		{"iso-8859-2", "utf-8", []byte("\xb1\xe6"), "ąć", 0},
		{"iso-8859-5", "utf-8", []byte("\xbf\xe0\xd8\xd2\xd5\xe2"), "Привет", 0},
		{"iso-8859-7", "utf-8", []byte("\xe1"), "α", 0},
		{"iso-8859-15", "utf-8", []byte("\xa4"), "€", 0},
		{"windows-1252", "utf-8", []byte("\x93q\x94 \x80\n"), "\u201cq\u201d €\r\n", 1},
		{"Shift_JIS", "utf-8", mustBytes(japanese.ShiftJIS.NewEncoder().Bytes([]byte("日本語\n"))), "日本語\r\n", 1},
		{"x-sjis", "utf-8", mustBytes(japanese.ShiftJIS.NewEncoder().Bytes([]byte("ｶﾅ"))), "ｶﾅ", 0},
		{"ISO-2022-JP", "utf-8", mustBytes(japanese.ISO2022JP.NewEncoder().Bytes([]byte("テスト"))), "テスト", 0},
		{"UTF-16", "utf-8", mustBytes(unicode.UTF16(unicode.BigEndian, unicode.UseBOM).NewEncoder().Bytes([]byte("a\nb"))), "a\r\nb", 1},
		{"UTF-16LE", "utf-8", []byte("a\x00\n\x00"), "a\r\n", 1},
		{"utf-8", "iso-8859-1", []byte("Grüße\n"), "Gr\xfc\xdfe\r\n", 1},
		{"utf-8", "ISO-2022-JP", []byte("日本"), string(mustBytes(japanese.ISO2022JP.NewEncoder().Bytes([]byte("日本")))), 0},
		{"utf-8", "UTF-16LE", []byte("a\n"), "a\x00\r\x00\n\x00", 1},
		{"us-ascii", "utf-8", []byte("plain\x80"), "plain\ufffd", 0},
	} {
		from, ok1 := lookupCharset(tc.from)
		to, ok2 := lookupCharset(tc.to)
		if !ok1 || !ok2 {
			t.Fatalf("%s or %s unknown", tc.from, tc.to)
		}
		var lines int64
		got, err := io.ReadAll(transcode(bytes.NewReader(tc.in), from, to, nil, false, &lines))
		if err != nil || string(got) != tc.want || lines != tc.lines {
			t.Errorf("%s to %s of %q: %q (%d lines) %v, want %q (%d lines)", tc.from, tc.to, tc.in, got, lines, err, tc.want, tc.lines)
		}
	}
}

// TestUnrepresentable: a character the target lacks fails the conversion,
// or becomes the replacement.
func TestUnrepresentable(t *testing.T) {
	ascii, _ := lookupCharset("us-ascii")
	latin1, _ := lookupCharset("iso-8859-1")
	in := []byte("Caf\xe9 \xe8")
	var lines int64
	_, err := io.ReadAll(transcode(bytes.NewReader(in), latin1, ascii, nil, false, &lines))
	if !errors.Is(err, errUnrepresentable) {
		t.Fatalf("us-ascii of é: %v", err)
	}
	got, err := io.ReadAll(transcode(bytes.NewReader(in), latin1, ascii, []byte("?"), true, &lines))
	if err != nil || string(got) != "Caf? ?" {
		t.Fatalf("with replacement: %q %v", got, err)
	}
	// A long text: the failure comes wherever the character is.
	long := append(bytes.Repeat([]byte("x"), 100000), '\xe9')
	if _, err := io.ReadAll(transcode(bytes.NewReader(long), latin1, ascii, nil, false, &lines)); !errors.Is(err, errUnrepresentable) {
		t.Fatalf("long: %v", err)
	}
	if _, err := encodeString(ascii, "é"); !errors.Is(err, errUnrepresentable) {
		t.Fatalf("encodeString: %v", err)
	}
	w1252, _ := lookupCharset("windows-1252")
	if b, err := encodeString(w1252, "€"); err != nil || string(b) != "\x80" {
		t.Fatalf("encodeString €: %q %v", b, err)
	}
}

// TestConvertHeader: encoded-words are re-encoded in the target charset;
// what cannot be decoded stays.
func TestConvertHeader(t *testing.T) {
	utf8, _ := lookupCharset("utf-8")
	latin1, _ := lookupCharset("iso-8859-1")
	for _, tc := range []struct {
		in, want string
		dst      string
	}{
		{"Subject: =?KOI8-R?Q?why encode this?=\r\n", "Subject: =?UTF-8?Q?why_encode_this?=\r\n", "utf-8"},
		{"Subject: =?ISO-8859-1?Q?Caf=E9?= ok\r\n", "Subject: =?UTF-8?Q?Caf=C3=A9?= ok\r\n", "utf-8"},
		{"Subject: =?utf-8?B?w6k=?=\r\n", "Subject: =?ISO-8859-1?Q?=E9?=\r\n", "iso-8859-1"},
		{"Subject: =?utf-8*fr?Q?=C3=A9?=\r\n", "Subject: =?UTF-8?Q?=C3=A9?=\r\n", "utf-8"},
		{"Subject: =?x-unknown?Q?abc?=\r\n", "Subject: =?x-unknown?Q?abc?=\r\n", "utf-8"},
		{"Subject: =?utf-8?Q?=E2=82=AC?=\r\n", "Subject: =?utf-8?Q?=E2=82=AC?=\r\n", "iso-8859-1"}, // € not in Latin-1
		{"From: =?utf-8?Q?A_(B)?= <a@b>\r\n", "From: =?UTF-8?Q?A_=28B=29?= <a@b>\r\n", "utf-8"},
		{"X: plain\r\n", "X: plain\r\n", "utf-8"},
	} {
		dst := utf8
		if tc.dst != "utf-8" {
			dst = latin1
		}
		if got := string(convertHeader([]byte(tc.in), dst, tc.dst)); got != tc.want {
			t.Errorf("%q to %s: %q, want %q", tc.in, tc.dst, got, tc.want)
		}
	}
	// A long word is split into words of at most 75 characters.
	long := "Subject: =?utf-8?B?" + base64Of(strings.Repeat("é", 60)) + "?=\r\n"
	got := string(convertHeader([]byte(long), utf8, "utf-8"))
	for _, w := range strings.Fields(strings.TrimPrefix(strings.TrimSuffix(got, "\r\n"), "Subject: ")) {
		if len(w) > 75 {
			t.Errorf("word of %d characters: %q", len(w), w)
		}
	}
	if dec, err := wordDecoder.DecodeHeader(strings.TrimSuffix(strings.TrimPrefix(got, "Subject: "), "\r\n")); err != nil || dec != strings.Repeat("é", 60) {
		t.Errorf("split words decode to %q %v", dec, err)
	}
}

// TestClientConverted: an upstream CONVERTED response in the client's
// terms (the relay).
func TestClientConverted(t *testing.T) {
	seqOf := func(uid uint32) uint32 {
		if uid == 100 {
			return 7
		}
		return 0
	}
	for _, tc := range []struct {
		in      string
		keepUID bool
		want    string
		ok      bool
	}{
		{`* 3 CONVERTED (TAG "L12") (UID 100 BINARY[2] ~{4182}`, true, `* 7 CONVERTED (TAG "a1") (UID 100 BINARY[2] ~{4182}`, true},
		{`* 3 CONVERTED (TAG "L12") (UID 100 BINARY[2] ~{4182}`, false, `* 7 CONVERTED (TAG "a1") (BINARY[2] ~{4182}`, true},
		{`* 3 CONVERTED (TAG "L12") (UID 100)`, false, `* 7 CONVERTED (TAG "a1") (UID 100)`, true},
		{`* 3 CONVERTED (TAG "L12") (UID 101 BINARY.SIZE[1] 5)`, true, "", false},
		{`* 3 CONVERTED (TAG "L12") (BINARY.SIZE[1] 5)`, true, "", false},
	} {
		got, ok := clientConverted([]byte(tc.in), "a1", tc.keepUID, seqOf)
		if ok != tc.ok || string(got) != tc.want {
			t.Errorf("%q: %q %v, want %q %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func base64Of(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func mustBytes(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
