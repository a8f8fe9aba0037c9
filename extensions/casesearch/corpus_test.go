package casesearch_test

import (
	"fmt"
	"strings"
)

// corpus is the mailbox the tests search: RFC 5051's canonical forms
// (case, compatibility and canonical decomposition, simple titlecase) in
// subjects encoded every way RFC 2047 allows, and in bodies encoded every
// way RFC 2045 allows, in ISO-8859-1 and UTF-8. Messages are UIDs 1 to
// len(corpus) in an empty INBOX; 2 and 9 are \Seen.
var corpus = []string{
	// 1, 2: ASCII case.
	"From: Anna Berg <anna@example.org>\r\nTo: team@example.org\r\nSubject: Strasse\r\n\r\nplain body\r\n",
	"From: bob@example.org\r\nSubject: STRASSE\r\nX-Tag: red  green\r\n\r\nanother body\r\n",
	// 3: sharp s, which has no simple titlecase: not "ss".
	"From: carl@example.org\r\nSubject: =?UTF-8?Q?Stra=C3=9Fe?=\r\n\r\nthird\r\n",
	// 4: ISO-8859-1 Q-encoded words, two of them (the space between goes).
	"From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <joerg@example.org>\r\nSubject: =?ISO-8859-1?Q?caf=E9?= =?ISO-8859-1?Q?_cr=E8me?=\r\n\r\nfourth\r\n",
	// 5: titlecase digraph LATIN CAPITAL D WITH SMALL LETTER Z WITH CARON (U+01C5), B-encoded.
	"From: dz@example.org\r\nSubject: =?UTF-8?B?x4VlbWFs?=\r\n\r\nfifth\r\n",
	// 6: the ligature fi (U+FB01): no titlecase, NFKD gives lower-case "fi".
	"From: fish@example.org\r\nSubject: =?UTF-8?Q?=EF=AC=81sh_market?=\r\n\r\nsixth\r\n",
	// 7: fullwidth FULL (U+FF26 U+FF35 U+FF2C U+FF2C): NFKD gives ASCII.
	"From: wide@example.org\r\nSubject: =?UTF-8?B?77ym77y177ys77ys?= width\r\n\r\nseventh\r\n",
	// 8: e + COMBINING ACUTE, then precomposed e-acute.
	"From: ete@example.org\r\nSubject: =?UTF-8?Q?e=CC=81t=C3=A9?=\r\n\r\neighth\r\n",
	// 9: quoted-printable ISO-8859-1 body with a soft line break.
	"From: koeln@example.org\r\nSubject: greetings\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe aus K=F6ln=\r\n und Bonn\r\n",
	// 10: base64 UTF-8 body.
	"From: b64@example.org\r\nSubject: base64\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nw6l0w6kgU1RSQVNTRSDOo86KzqPOpc6mzp/Oow==\r\n",
	// 11: multipart: a text part, an application part (never searched), an attached message.
	"From: multi@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe text part\r\n--b1\r\nContent-Type: application/octet-stream\r\n\r\nsecretword\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner subj\r\nFrom: inner@example.org\r\n\r\ninner body\r\n--b1--\r\n",
	// 12: HTML (searched as it is, tags and all) in a base64 part of an alternative.
	"From: html@example.org\r\nSubject: html\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nr=E9sum=E9\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+UsOJU1VNw4k8L2I+\r\n--alt--\r\n",
	// 13: LATIN CAPITAL LETTER OLD POLISH O (U+A7C0), new in Unicode 14,
	// whose lower case U+A7C1 Dovecot 2.3's tables do not know.
	"From: new@example.org\r\nSubject: =?UTF-8?Q?=EA=9F=80_unicode_14?=\r\n\r\nthirteenth\r\n",
}

// seen are the corpus messages appended \Seen.
var seen = map[int]bool{2: true, 9: true}

// search is one search of the corpus and its answer by RFC 5051 and RFC
// 3501 6.4.4 (and RFC 5255 4: i;unicode-casemap for the substring keys).
type search struct {
	cmd  string
	lits []string // the command's literals, sent after "+"
	want string   // the untagged answer
	// dovecot is Dovecot 2.3's own answer where it departs from RFC
	// 5051 ("" where it agrees): its Unicode tables are older than Go's
	// (Unicode 15), and lack the case pairs added since.
	dovecot string
}

// searches are the searches the tests run. Strings in the command line
// are 8-bit quoted strings, which Dovecot and go-imap's server take;
// a few go as literals.
var searches = []search{
	{cmd: "SEARCH SUBJECT strasse", want: "* SEARCH 1 2"},
	{cmd: "SEARCH SUBJECT STRASSE", want: "* SEARCH 1 2"},
	{cmd: "SEARCH CHARSET UTF-8 SUBJECT {7}", lits: []string{"straße"}, want: "* SEARCH 3"},
	{cmd: `SEARCH CHARSET UTF-8 SUBJECT "STRAßE"`, want: "* SEARCH 3"},
	{cmd: `SEARCH SUBJECT "CAFÉ CRÈME"`, want: "* SEARCH 4"},
	{cmd: `SEARCH FROM "jörg müller"`, want: "* SEARCH 4"},
	{cmd: `SEARCH FROM "JÖRG"`, want: "* SEARCH 4"},
	// U+01C6 and U+01C4 titlecase to U+01C5; "d" + "ž" does not (its
	// canonical form has an upper-case Z, U+01C5's a lower-case z).
	{cmd: `SEARCH SUBJECT "ǆemal"`, want: "* SEARCH 5"},
	{cmd: `SEARCH SUBJECT "Ǆ"`, want: "* SEARCH 5"},
	{cmd: `SEARCH SUBJECT "ǅ"`, want: "* SEARCH 5"},
	{cmd: `SEARCH SUBJECT "dž"`, want: "* SEARCH"},
	// The ligature's canonical form is a lower-case "fi": "ﬁSH" and
	// "ﬁsh" find it, "fish" does not.
	{cmd: `SEARCH SUBJECT "ﬁSH"`, want: "* SEARCH 6"},
	{cmd: `SEARCH SUBJECT "ﬁ"`, want: "* SEARCH 6"},
	{cmd: `SEARCH SUBJECT "fiSH"`, want: "* SEARCH"},
	{cmd: `SEARCH SUBJECT "fish"`, want: "* SEARCH"},
	{cmd: `SEARCH SUBJECT full`, want: "* SEARCH 7"},
	{cmd: `SEARCH SUBJECT "ｆｕｌｌ"`, want: "* SEARCH 7"},
	{cmd: `SEARCH SUBJECT "été"`, want: "* SEARCH 8"},
	{cmd: "SEARCH CHARSET UTF-8 SUBJECT {7}", lits: []string{"E\u0301TE\u0301"}, want: "* SEARCH 8"},
	{cmd: `SEARCH SUBJECT "ete"`, want: "* SEARCH"},
	{cmd: `SEARCH BODY "GRÜßE AUS KÖLN UND"`, want: "* SEARCH 9"},
	{cmd: `SEARCH BODY "grüsse"`, want: "* SEARCH"},
	{cmd: `SEARCH BODY "été strasse"`, want: "* SEARCH 10"},
	{cmd: `SEARCH BODY "σΐσυφοσ"`, want: "* SEARCH"}, // ΐ is not Ί
	{cmd: `SEARCH BODY "σίσυφος"`, want: "* SEARCH 10"},
	{cmd: `SEARCH TEXT strasse`, want: "* SEARCH 1 2 10"},
	{cmd: `SEARCH BODY "THE TEXT PART"`, want: "* SEARCH 11"},
	{cmd: `SEARCH BODY secretword`, want: "* SEARCH"},
	{cmd: `SEARCH TEXT secretword`, want: "* SEARCH"},
	{cmd: `SEARCH BODY "inner body"`, want: "* SEARCH 11"},
	{cmd: `SEARCH BODY "inner subj"`, want: "* SEARCH"},
	{cmd: `SEARCH TEXT "inner subj"`, want: "* SEARCH 11"},
	{cmd: `SEARCH SUBJECT "inner"`, want: "* SEARCH"},
	{cmd: `SEARCH TEXT "content-type: application/octet"`, want: "* SEARCH 11"},
	{cmd: `SEARCH BODY "RÉSUMÉ"`, want: "* SEARCH 12"},
	{cmd: `SEARCH SUBJECT "ꟁ UNICODE"`, want: "* SEARCH 13", dovecot: "* SEARCH"},
	{cmd: `SEARCH BODY "<b>résumé</b>"`, want: "* SEARCH 12"},
	{cmd: `SEARCH TEXT "subject: strasse"`, want: "* SEARCH 1 2"},
	{cmd: `SEARCH HEADER X-Tag "RED  GREEN"`, want: "* SEARCH 2"},
	{cmd: `SEARCH HEADER X-Tag ""`, want: "* SEARCH 2"},
	{cmd: `SEARCH HEADER x-tag "red green"`, want: "* SEARCH"},
	{cmd: `SEARCH TO ""`, want: "* SEARCH 1"},
	{cmd: `SEARCH BODY ""`, want: "* SEARCH 1:13"},
	// NOT, OR, other keys, UID, RETURN.
	{cmd: `SEARCH NOT SUBJECT strasse`, want: "* SEARCH 3:13"},
	{cmd: `SEARCH OR SUBJECT strasse BODY "köln"`, want: "* SEARCH 1 2 9"},
	{cmd: `SEARCH UNSEEN OR SUBJECT strasse BODY "köln"`, want: "* SEARCH 1"},
	{cmd: `SEARCH NOT (SEEN NOT SUBJECT "STRASSE")`, want: "* SEARCH 1:8 10:13"},
	{cmd: `SEARCH 1:5 NOT FROM example.org`, want: "* SEARCH"},
	{cmd: `SEARCH OR NOT SUBJECT "é" NOT TEXT "É"`, want: "* SEARCH 1:3 5:7 9:13"},
	{cmd: `UID SEARCH SUBJECT strasse`, want: "* SEARCH 1 2"},
	{cmd: `SEARCH RETURN (COUNT MIN) SUBJECT strasse`, want: `* ESEARCH (TAG "t") MIN 1 COUNT 2`},
	{cmd: `SEARCH SUBJECT strasse SUBJECT "STRASSE" FROM anna`, want: "* SEARCH 1"},
}

// corpusMessage returns message n (from 1) of the corpus.
func corpusMessage(n int) []byte { return []byte(corpus[n-1]) }

// expand writes a set of numbers as the numbers ("1:3 5" -> "1 2 3 5").
func expand(answer string) string {
	head, rest, ok := strings.Cut(answer, " SEARCH")
	if !ok || head != "*" {
		return answer
	}
	var out []string
	for _, f := range strings.Fields(rest) {
		lo, hi, ok := strings.Cut(f, ":")
		if !ok {
			out = append(out, f)
			continue
		}
		var a, b int
		fmt.Sscan(lo, &a)
		fmt.Sscan(hi, &b)
		for i := a; i <= b; i++ {
			out = append(out, fmt.Sprint(i))
		}
	}
	return strings.TrimSpace(head + " SEARCH " + strings.Join(out, " "))
}
