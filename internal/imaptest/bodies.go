package imaptest

import (
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Sample message bodies for measuring COMPRESS=DEFLATE on what phones
// download: deterministic, so that every run and every side of a
// comparison compresses the same bytes.

// AttachmentMessage returns a message of about size bytes: a short text
// part and a base64 attachment of pseudo-random bytes (a photo or a PDF:
// deflate finds nothing to match, but base64 uses 64 of the 256 byte
// values, so a Huffman code alone saves about a quarter).
func AttachmentMessage(size int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0xa77ac4))
	var b strings.Builder
	fmt.Fprintf(&b, "From: Anna Müller <anna@example.org>\r\nTo: alice@example.org\r\nSubject: Photos from the trip %d\r\n"+
		"Date: Mon, 2 Nov 2026 10:00:00 +0000\r\nMessage-ID: <att%d@example.org>\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: multipart/mixed; boundary=\"=_b%08x\"\r\n\r\n--=_b%08x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"+
		"Hi, here is the photo from Saturday.\r\n\r\n--=_b%08x\r\nContent-Type: image/jpeg; name=\"IMG_%04d.jpg\"\r\n"+
		"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"IMG_%04d.jpg\"\r\n\r\n",
		seed, seed, seed, seed, seed, seed, seed)
	tail := fmt.Sprintf("\r\n--=_b%08x--\r\n", seed)
	raw := make([]byte, max(0, (size-b.Len()-len(tail))*57/78))
	for i := range raw {
		raw[i] = byte(rng.Uint32())
	}
	enc := base64.StdEncoding.EncodeToString(raw)
	for len(enc) > 76 {
		b.WriteString(enc[:76])
		b.WriteString("\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc)
	b.WriteString(tail)
	return []byte(b.String())
}

// TextMessage returns a plain text message of about size bytes: English
// prose, the text of Mark Twain's Tom Sawyer (about 400 KB) that the
// klauspost/compress module carries as test data, from a point that seed
// picks (wrapping around), or, where the module cache is not at hand,
// sentences of random common words. The second result names the source.
func TextMessage(size int, seed uint64) ([]byte, string) {
	text, source := prose()
	if text == "" {
		text, source = randomProse(400<<10), "random words"
	}
	head := fmt.Sprintf("From: Ben Schmidt <ben@example.org>\r\nTo: alice@example.org\r\nSubject: The chapters, part %d\r\n"+
		"Date: Mon, 2 Nov 2026 11:00:00 +0000\r\nMessage-ID: <text%d@example.org>\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=us-ascii\r\n\r\n", seed, seed)
	n := max(0, size-len(head))
	from := int(seed * 104729 % uint64(len(text)))
	var b strings.Builder
	b.WriteString(head)
	for b.Len() < len(head)+n {
		k := min(len(text)-from, len(head)+n-b.Len())
		b.WriteString(text[from : from+k])
		from = 0
	}
	return []byte(b.String()), source
}

var prose = sync.OnceValues(func() (string, string) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/klauspost/compress").Output()
	if err != nil {
		return "", ""
	}
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "testdata", "Mark.Twain-Tom.Sawyer.txt"))
	if err != nil {
		return "", ""
	}
	s := strings.ReplaceAll(string(b), "\r\n", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n"), "Tom Sawyer (klauspost/compress testdata)"
})

var commonWords = strings.Fields("the of and to a in is it you that he was for on are with as I his they be at one have this from " +
	"or had by hot word but what some we can out other were all there when up use your how said an each she which do their time " +
	"if will way about many then them write would like so these her long make thing see him two has look more day could go come " +
	"did number sound no most people my over know water than call first who may down side been now find any new work part take " +
	"get place made live where after back little only round man year came show every good me give our under name very through")

// randomProse is lines of up to 72 characters of sentences of random
// common words.
func randomProse(size int) string {
	rng := rand.New(rand.NewPCG(3, 4))
	var b strings.Builder
	line := 0
	for b.Len() < size {
		n := 6 + rng.IntN(14)
		ws := make([]string, n)
		for i := range ws {
			ws[i] = commonWords[rng.IntN(len(commonWords))]
		}
		s := strings.Join(ws, " ")
		s = strings.ToUpper(s[:1]) + s[1:] + ". "
		if line+len(s) > 72 {
			b.WriteString("\r\n")
			line = 0
		}
		b.WriteString(s)
		line += len(s)
	}
	return b.String()
}
