package binary

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"

	"github.com/emersion/go-message/textproto"

	"github.com/lemonproxy/lemonproxy/extensions/internal/bodypart"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// MaxBinaryAppend is the largest literal8 APPEND synthesized: the message
// is read whole and re-encoded in memory (about 2.4 times its size at
// the peak), so larger ones are refused with NO [TOOBIG].
const MaxBinaryAppend = 16 << 20

// maxMIMEDepth bounds the nesting of multiparts re-encoded.
const maxMIMEDepth = 20

// serveAppend answers an APPEND whose first message is a literal8 (~{n})
// for an upstream without BINARY: the command is read whole (up to
// MaxBinaryAppend), every literal8 message is re-encoded (reencode), and
// the command goes upstream with non-synchronising literals. An upstream
// without LITERAL+ cannot be given a literal by Session.Exec, so the
// APPEND is refused there.
func (e *Extension) serveAppend(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if lit := x.Segments[0].Literal; lit == nil || !lit.Binary {
		return next(ctx, x)
	}
	ok, err := x.ReadWhole(min(int64(MaxBinaryAppend), e.maxAppend))
	if err != nil || !ok {
		return err
	}
	if !s.UpstreamCaps().Has("LITERAL+") {
		return x.Reply("NO", "CANNOT", "APPEND with literal8 needs an upstream server with LITERAL+.")
	}
	var cmd bytes.Buffer
	for i, seg := range x.Segments {
		text := seg.Text
		if i == 0 {
			text = bytes.TrimPrefix(text[len(x.Tag):], []byte(" "))
		}
		cmd.Write(text)
		if seg.Literal == nil {
			break
		}
		data := seg.Data
		if seg.Literal.Binary {
			var b bytes.Buffer
			if err := reencode(&b, data); err != nil {
				return x.Reply("NO", "PARSE", "Cannot re-encode the message: "+err.Error()+".")
			}
			data = b.Bytes()
		}
		fmt.Fprintf(&cmd, "{%d+}\r\n", len(data))
		cmd.Write(data)
	}
	resp, err := s.Exec(ctx, cmd.String(), nil)
	var se *upstream.StatusError
	switch {
	case errors.As(err, &se):
		return x.Reply(se.Head.Name, codeOf(se.Head), se.Head.Text)
	case err != nil:
		return x.Reply("NO", "UNAVAILABLE", "The upstream server failed.")
	}
	return x.Reply(resp.Head.Name, codeOf(resp.Head), resp.Head.Text)
}

func codeOf(h imapcodec.ResponseHead) string {
	if h.CodeArg != "" {
		return h.Code + " " + h.CodeArg
	}
	return h.Code
}

// reencode writes msg with every leaf part that an IMAP4rev1 server
// cannot store as it is (Content-Transfer-Encoding binary, or 7bit/8bit
// data holding NUL, a bare CR or LF, or a line over 998 octets, RFC 5322
// 2.1.1) in base64, and its Content-Transfer-Encoding set so. Other parts
// are copied unchanged; multiparts and message/rfc822 parts are walked
// (go-message's textproto reads the headers and multiparts). A
// multipart's preamble and epilogue are dropped.
func reencode(w io.Writer, msg []byte) error {
	br := bufio.NewReader(bytes.NewReader(msg))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return err
	}
	h2, body, err := entity(h, br, 0)
	if err != nil {
		return err
	}
	if h2.Get("Mime-Version") == "" && h2.Get("Content-Transfer-Encoding") == "base64" && h.Get("Content-Transfer-Encoding") != "base64" {
		h2.Add("MIME-Version", "1.0")
	}
	if err := textproto.WriteHeader(w, h2); err != nil {
		return err
	}
	return body(w)
}

// entity returns the header an entity is written with and what writes its
// body. A leaf's body is read at once; a multipart's parts are read as
// the returned function writes them.
func entity(h textproto.Header, body io.Reader, depth int) (textproto.Header, func(io.Writer) error, error) {
	if depth > maxMIMEDepth {
		return h, nil, errors.New("MIME parts nested too deep")
	}
	mt, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
	switch {
	case strings.HasPrefix(mt, "multipart/") && params["boundary"] != "":
		return h, func(w io.Writer) error {
			mr := textproto.NewMultipartReader(body, params["boundary"])
			mw := textproto.NewMultipartWriter(w)
			if err := mw.SetBoundary(params["boundary"]); err != nil {
				return err
			}
			for {
				p, err := mr.NextPart()
				if err == io.EOF {
					break
				}
				if err != nil {
					return err
				}
				ph, pbody, err := entity(p.Header, p, depth+1)
				if err != nil {
					return err
				}
				pw, err := mw.CreatePart(ph)
				if err != nil {
					return err
				}
				if err := pbody(pw); err != nil {
					return err
				}
			}
			return mw.Close()
		}, nil
	case mt == "message/rfc822":
		return h, func(w io.Writer) error {
			br := bufio.NewReader(body)
			inner, err := textproto.ReadHeader(br)
			if err != nil {
				return err
			}
			ih, ibody, err := entity(inner, br, depth+1)
			if err != nil {
				return err
			}
			if err := textproto.WriteHeader(w, ih); err != nil {
				return err
			}
			return ibody(w)
		}, nil
	}
	data, err := io.ReadAll(body)
	if err != nil {
		return h, nil, err
	}
	cte := strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	if cte == "binary" || (cte == "" || cte == "7bit" || cte == "8bit") && needsEncoding(data) {
		bodypart.SetCTE(&h, "base64")
		return h, func(w io.Writer) error { return writeBase64(w, data) }, nil
	}
	return h, func(w io.Writer) error { _, err := w.Write(data); return err }, nil
}

// needsEncoding tells data an IMAP4rev1 server may refuse or damage.
func needsEncoding(data []byte) bool {
	if bytes.IndexByte(data, 0) >= 0 {
		return true
	}
	line := 0
	for i, c := range data {
		switch c {
		case '\r':
			if i+1 >= len(data) || data[i+1] != '\n' {
				return true
			}
		case '\n':
			if i == 0 || data[i-1] != '\r' {
				return true
			}
			line = 0
			continue
		}
		line++
		if line > 998 {
			return true
		}
	}
	return false
}

// writeBase64 writes data in base64, in lines of 76 characters.
func writeBase64(w io.Writer, data []byte) error {
	enc := base64.StdEncoding.EncodeToString(data)
	bw := bufio.NewWriter(w)
	for len(enc) > 76 {
		bw.WriteString(enc[:76])
		bw.WriteString("\r\n")
		enc = enc[76:]
	}
	bw.WriteString(enc)
	bw.WriteString("\r\n")
	return bw.Flush()
}
