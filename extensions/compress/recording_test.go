package compress_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
)

// A recorded mobile-style first sync, synthesised deterministically: what a
// phone's mail app sends and receives when it opens an account. Each element
// of server is one burst of responses (everything the proxy sends before it
// waits for the client again), each element of client one command.
//
//	LOGIN, CAPABILITY, LIST "" "*" (15 folders), SELECT INBOX,
//	UID FETCH 1:500 (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE),
//	and the text of the 5 newest messages, one UID FETCH each.
type recording struct {
	client, server [][]byte
}

var (
	firstNames = strings.Fields("Anna Ben Carla David Eva Felix Greta Hugo Ines Jonas Katrin Lukas Maria Noah Olga Paul Rosa Simon Tanja Uwe Vera Jan Lea Tim Nina Max Sara Tom Julia Erik")
	lastNames  = strings.Fields("Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Koch Richter Klein Wolf Neumann Schwarz Braun Zimmermann Hartmann Krüger")
	domains    = strings.Fields("example.org example.com mail.example.net lists.example.org shop.example.com bank.example.de work.example.io")
	topics     = strings.Fields("budget meeting report invoice offer contract release roadmap holiday party review schedule update newsletter order delivery ticket account password security conference")
	phrases    = []string{"Re: ", "Fwd: ", "", "", "", "[team] ", "AW: "}
	words      = strings.Fields("the of and to a in is it you that he was for on are with as I his they be at one have this from or had by hot word but what some we can out other were all there when up use your how said an each she which do their time if will way about many then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my over know water than call first who may down side been now find any new work part take get place made live where after back little only round man year came show every good me give our under name very through just form sentence great think say help low line differ turn cause much mean before move right boy old too same tell does set three want air well also play small end put home read hand port large spell add even land here must big high such follow act why ask men change went light kind off need house picture try us again animal point mother world near build self earth father")
)

func person(rng *rand.Rand) (name, mailbox, host string) {
	f, l := firstNames[rng.IntN(len(firstNames))], lastNames[rng.IntN(len(lastNames))]
	return f + " " + l, strings.ToLower(f) + "." + strings.ToLower(strings.ReplaceAll(strings.ReplaceAll(l, "ü", "ue"), "ö", "oe")), domains[rng.IntN(len(domains))]
}

func quoted(s string) string {
	if strings.ContainsAny(s, "\"\\\r\n") || !isASCII(s) {
		return fmt.Sprintf("{%d}\r\n%s", len(s), s)
	}
	return `"` + s + `"`
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func addrList(rng *rand.Rand, n int) string {
	if n == 0 {
		return "NIL"
	}
	var b strings.Builder
	b.WriteByte('(')
	for range n {
		name, mb, host := person(rng)
		if !isASCII(name) {
			name = "=?utf-8?Q?" + strings.NewReplacer("ü", "=C3=BC", "ö", "=C3=B6", " ", "_").Replace(name) + "?="
		}
		fmt.Fprintf(&b, "(%s NIL %s %s)", quoted(name), quoted(mb), quoted(host))
	}
	b.WriteByte(')')
	return b.String()
}

func sentence(rng *rand.Rand) string {
	n := 6 + rng.IntN(14)
	ws := make([]string, n)
	for i := range ws {
		ws[i] = words[rng.IntN(len(words))]
	}
	s := strings.Join(ws, " ")
	return strings.ToUpper(s[:1]) + s[1:] + "."
}

func textBody(rng *rand.Rand, size int) string {
	var b strings.Builder
	b.WriteString("Hello,\r\n\r\n")
	line := 0
	for b.Len() < size {
		s := sentence(rng) + " "
		if line+len(s) > 72 {
			b.WriteString("\r\n")
			line = 0
			if rng.IntN(6) == 0 {
				b.WriteString("\r\n")
			}
		}
		b.WriteString(s)
		line += len(s)
	}
	b.WriteString("\r\n\r\nBest regards\r\n")
	return b.String()
}

func bodystructure(rng *rand.Rand, size int) string {
	lines := size / 60
	plain := fmt.Sprintf(`("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" %d %d NIL NIL NIL NIL)`, size, lines)
	switch rng.IntN(4) {
	case 0:
		return plain
	case 1, 2:
		html := fmt.Sprintf(`("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" %d %d NIL NIL NIL NIL)`, size*3, lines*2)
		return fmt.Sprintf(`(%s %s "alternative" ("boundary" "b1_%08x") NIL NIL NIL)`, plain, html, rng.Uint32())
	default:
		att := []string{`"application" "pdf"`, `"image" "jpeg"`, `"application" "vnd.openxmlformats-officedocument.spreadsheetml.sheet"`}[rng.IntN(3)]
		name := topics[rng.IntN(len(topics))] + []string{".pdf", ".jpg", ".xlsx"}[rng.IntN(3)]
		return fmt.Sprintf(`(%s (%s ("name" %q) NIL NIL "base64" %d NIL ("attachment" ("filename" %q)) NIL NIL) "mixed" ("boundary" "=_%08x") NIL NIL NIL)`,
			plain, att, name, 20000+rng.IntN(400000), name, rng.Uint32())
	}
}

// mobileSync builds the recording.
func mobileSync() recording {
	rng := rand.New(rand.NewPCG(2026, 11))
	var rec recording
	cmd := func(s string) { rec.client = append(rec.client, []byte(s)) }
	resp := func(s string) { rec.server = append(rec.server, []byte(s)) }

	resp("* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE AUTH=PLAIN] lemonproxy ready.\r\n")
	cmd("A001 LOGIN \"anna.mueller@example.org\" \"correct horse battery staple\"\r\n")
	caps := "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UNSELECT NAMESPACE UIDPLUS MOVE SPECIAL-USE LIST-STATUS IDLE COMPRESS=DEFLATE"
	resp("A001 OK [CAPABILITY " + caps + "] Logged in\r\n")
	cmd("A002 ID (\"name\" \"Mail\" \"version\" \"16.0\" \"os\" \"iOS\")\r\n")
	resp("* ID (\"name\" \"Dovecot\")\r\nA002 OK ID completed.\r\n")
	cmd("A003 LIST \"\" \"*\"\r\n")
	var b strings.Builder
	for _, f := range []string{`(\HasNoChildren) "/" "INBOX"`, `(\HasNoChildren \Sent) "/" "Sent"`, `(\HasNoChildren \Drafts) "/" "Drafts"`,
		`(\HasNoChildren \Trash) "/" "Trash"`, `(\HasNoChildren \Junk) "/" "Junk"`, `(\HasNoChildren \Archive) "/" "Archive"`,
		`(\HasChildren) "/" "Projects"`, `(\HasNoChildren) "/" "Projects/Roadmap 2027"`, `(\HasNoChildren) "/" "Projects/Budget"`,
		`(\HasNoChildren) "/" "Receipts"`, `(\HasNoChildren) "/" "Travel"`, `(\HasNoChildren) "/" "Newsletters"`,
		`(\HasNoChildren) "/" "Family"`, `(\HasNoChildren) "/" "Notes"`, `(\HasNoChildren) "/" "Lists/golang-nuts"`} {
		b.WriteString("* LIST " + f + "\r\n")
	}
	b.WriteString("A003 OK List completed (0.001 + 0.000 secs).\r\n")
	resp(b.String())
	cmd("A004 SELECT \"INBOX\"\r\n")
	resp("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Junk $NotJunk)\r\n" +
		"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Junk $NotJunk \\*)] Flags permitted.\r\n" +
		"* 500 EXISTS\r\n* 0 RECENT\r\n* OK [UNSEEN 481] First unseen.\r\n* OK [UIDVALIDITY 1764201234] UIDs valid\r\n" +
		"* OK [UIDNEXT 4711] Predicted next UID\r\nA004 OK [READ-WRITE] Select completed (0.002 + 0.000 + 0.001 secs).\r\n")
	cmd("A005 UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)\r\n")
	b.Reset()
	type msgInfo struct {
		uid  int
		size int
	}
	var msgs []msgInfo
	uid := 3000
	date := int64(1761955200) // 2025-11-01
	for i := 1; i <= 500; i++ {
		uid += 1 + rng.IntN(4)
		date += int64(600 + rng.IntN(7200))
		t := fmtDate(date)
		flags := `\Seen`
		switch {
		case i > 480:
			flags = ""
		case rng.IntN(10) == 0:
			flags = `\Seen \Answered`
		case rng.IntN(25) == 0:
			flags = `\Seen \Flagged`
		}
		subject := phrases[rng.IntN(len(phrases))] + strings.ToUpper(topics[rng.IntN(len(topics))][:1]) + topics[rng.IntN(len(topics))][1:] + " " + []string{"for Q4", "next week", "draft", "– please review", "#" + fmt.Sprint(1000+rng.IntN(9000)), "update", "", "and follow-up"}[rng.IntN(8)]
		_, mb, host := person(rng)
		msgid := fmt.Sprintf("<%x.%x@%s>", rng.Uint64(), rng.Uint32(), host)
		inReply := "NIL"
		if strings.HasPrefix(subject, "Re: ") || strings.HasPrefix(subject, "AW: ") {
			inReply = quoted(fmt.Sprintf("<%x@%s>", rng.Uint64(), domains[rng.IntN(len(domains))]))
		}
		from := addrList(rng, 1)
		size := 1500 + rng.IntN(30000)
		msgs = append(msgs, msgInfo{uid, size})
		fmt.Fprintf(&b, "* %d FETCH (UID %d FLAGS (%s) INTERNALDATE %q RFC822.SIZE %d ENVELOPE (%q %s %s %s %s %s %s NIL %s %s) BODYSTRUCTURE %s)\r\n",
			i, uid, flags, t, size, t, quoted(subject), from, from, from,
			fmt.Sprintf(`((NIL NIL %q "example.org"))`, "anna.mueller"), addrList(rng, rng.IntN(3)), inReply, quoted(msgid),
			bodystructure(rng, size/2))
		_ = mb
	}
	b.WriteString("A005 OK Fetch completed (0.012 + 0.000 + 0.011 secs).\r\n")
	resp(b.String())
	for i, m := range msgs[len(msgs)-5:] {
		tag := fmt.Sprintf("A%03d", 6+i)
		cmd(fmt.Sprintf("%s UID FETCH %d (BODY.PEEK[1]<0.20480>)\r\n", tag, m.uid))
		body := textBody(rng, 2000+rng.IntN(6000))
		resp(fmt.Sprintf("* %d FETCH (UID %d BODY[1]<0> {%d}\r\n%s)\r\n%s OK Fetch completed (0.001 + 0.000 secs).\r\n", 496+i, m.uid, len(body), body, tag))
	}
	cmd("A011 IDLE\r\n")
	resp("+ idling\r\n")
	return rec
}

func fmtDate(unix int64) string {
	days := []string{"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"}
	months := []string{"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}
	// A plain civil-from-days conversion (UTC).
	d := unix / 86400
	secs := unix % 86400
	z := d + 719468
	era := z / 146097
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y := yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	day := doy - (153*mp+2)/5 + 1
	m := mp + 3
	if m > 12 {
		m -= 12
		y++
	}
	return fmt.Sprintf("%s, %02d %s %d %02d:%02d:%02d +0000", days[d%7], day, months[m-1], y, secs/3600, secs%3600/60, secs%60)
}

func (r recording) size() (client, server int) {
	for _, c := range r.client {
		client += len(c)
	}
	for _, s := range r.server {
		server += len(s)
	}
	return
}

func (r recording) serverBytes() []byte { return bytes.Join(r.server, nil) }
