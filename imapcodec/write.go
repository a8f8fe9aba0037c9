package imapcodec

import (
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"
)

// AppendQuoted appends s as a quoted string. s must not contain CR, LF or
// NUL (see CanQuote).
func AppendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '"' || c == '\\' {
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return append(b, '"')
}

// CanQuote reports whether s can be sent as a quoted string (RFC 3501
// quoted: 7-bit, no CR, LF or NUL; we also keep quoted strings short).
func CanQuote(s string) bool {
	return len(s) <= 1024 && Quotable(s)
}

// Quotable reports whether s can be a quoted string at all: 7-bit, no CR,
// LF or NUL, of any length (RFC 3501 and 9051 set none). It is for a
// string the client sent as a literal that must go upstream on the
// command's line, where a synchronising literal cannot (the upstream's
// line limit, 64 KiB for Dovecot, is then the bound; Dovecot answers a
// longer argument BAD and carries on).
func Quotable(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == 0 || c == '\r' || c == '\n' || c >= 0x80 {
			return false
		}
	}
	return true
}

// IsAtom reports whether s can be sent as a bare atom.
func IsAtom(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAtomChar(c) || c == '%' || c == '*' || c == '\\' {
			return false
		}
	}
	return true
}

// AppendString appends s as an atom if it is one (and is not NIL), else as a
// quoted string if it can be one, else as a literal (synchronising unless
// nonSync). Callers that write commands must handle the continuation request a
// synchronising literal needs.
func AppendString(b []byte, s string, nonSync bool) []byte {
	switch {
	case IsAtom(s) && !strings.EqualFold(s, "NIL"):
		return append(b, s...)
	case CanQuote(s):
		return AppendQuoted(b, s)
	}
	b = LiteralHeader{Size: int64(len(s)), NonSync: nonSync}.Format(b)
	b = append(b, '\r', '\n')
	return append(b, s...)
}

// AppendValue appends v in wire form: atoms as they are, strings quoted when
// possible (literals stay literals), lists with their members.
func AppendValue(b []byte, v Value) []byte {
	switch v := v.(type) {
	case Atom:
		return append(b, v...)
	case String:
		if !v.Literal && CanQuote(string(v.Data)) {
			return AppendQuoted(b, string(v.Data))
		}
		b = LiteralHeader{Size: int64(len(v.Data)), Binary: v.Binary}.Format(b)
		b = append(b, '\r', '\n')
		return append(b, v.Data...)
	case List:
		b = append(b, '(')
		for i, e := range v {
			if i > 0 {
				b = append(b, ' ')
			}
			b = AppendValue(b, e)
		}
		return append(b, ')')
	}
	return b
}

// AppendStatus appends a status response line: "tag OK [code] text\r\n".
func AppendStatus(b []byte, tag, status, code, text string) []byte {
	b = append(b, tag...)
	b = append(b, ' ')
	b = append(b, status...)
	b = append(b, ' ')
	if code != "" {
		b = append(b, '[')
		b = append(b, code...)
		b = append(b, "] "...)
	}
	b = append(b, sanitizeText(text)...)
	return append(b, '\r', '\n')
}

// sanitizeText keeps CR and LF out of human-readable text, so a message that
// quotes peer input cannot inject protocol lines.
func sanitizeText(s string) string {
	if !strings.ContainsAny(s, "\r\n\x00") {
		return s
	}
	// Byte by byte: strings.Map would also turn bytes that are not valid
	// UTF-8 into U+FFFD.
	b := []byte(s)
	for i, c := range b {
		if c == '\r' || c == '\n' || c == 0 {
			b[i] = ' '
		}
	}
	return string(b)
}

// AppendNumSet appends numbers as a sequence set, in the order given, each
// run of consecutive ascending numbers written as a range: "1:3,7" for 1 2 3
// 7, "3:5,1" for 3 4 5 1. A number equal to the one before it is folded into
// the run, so sorted input with duplicates gives the compact set. It is the
// one writer of number sets: the core's renumbered responses and the
// extensions' rewritten commands and synthesized answers all use it.
func AppendNumSet(b []byte, nums []uint32) []byte {
	for i := 0; i < len(nums); {
		j := i
		for j+1 < len(nums) && (nums[j+1] == nums[j] || nums[j+1] == nums[j]+1) {
			j++
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(nums[i]), 10)
		if nums[j] != nums[i] {
			b = strconv.AppendUint(append(b, ':'), uint64(nums[j]), 10)
		}
		i = j + 1
	}
	return b
}

// ParseNumSet parses a sequence set ("1:3,5,7:*"); "*" is represented as 0,
// as in go-imap. It accepts "$" (RFC 5182 SEARCHRES) only when allowDollar.
func ParseNumSet(s string) (imap.SeqSet, error) {
	var set imap.SeqSet
	if s == "" {
		return nil, errSyntax("empty sequence set")
	}
	for part := range strings.SplitSeq(s, ",") {
		start, stop, err := parseSetPart(part)
		if err != nil {
			return nil, err
		}
		set.AddRange(start, stop)
	}
	return set, nil
}

// parseSetPart parses one comma-separated part of a set: a number or a
// range "a:b", as written (a may be above b); "*" is 0.
func parseSetPart(part string) (start, stop uint32, err error) {
	a, b, isRange := strings.Cut(part, ":")
	if start, err = parseSeqNum(a); err != nil {
		return 0, 0, err
	}
	stop = start
	if isRange {
		if stop, err = parseSeqNum(b); err != nil {
			return 0, 0, err
		}
	}
	return start, stop, nil
}

func parseSeqNum(s string) (uint32, error) {
	if s == "*" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || (len(s) > 1 && s[0] == '0') {
		return 0, errSyntax("bad sequence number " + strconv.Quote(s))
	}
	return uint32(n), nil
}

// ParseUIDSet parses a UID set.
func ParseUIDSet(s string) (imap.UIDSet, error) {
	seq, err := ParseNumSet(s)
	if err != nil {
		return nil, err
	}
	var set imap.UIDSet
	for _, r := range seq {
		set.AddRange(imap.UID(r.Start), imap.UID(r.Stop))
	}
	return set, nil
}

func errSyntax(msg string) error {
	return &syntaxError{msg}
}

type syntaxError struct{ msg string }

func (e *syntaxError) Error() string { return "imapcodec: syntax error: " + e.msg }
func (e *syntaxError) Unwrap() error { return ErrSyntax }

// ExpandNumSet lists the numbers of a sequence or UID set in the order the
// set names them (COPYUID's two sets pair their messages by that order, RFC
// 4315 3), a range "a:b" from a to b either way. "*" is refused, as is a
// set of more than limit numbers.
func ExpandNumSet(s string, limit int) ([]uint32, error) {
	if s == "" {
		return nil, errSyntax("empty sequence set")
	}
	var out []uint32
	for part := range strings.SplitSeq(s, ",") {
		start, stop, err := parseSetPart(part)
		if err != nil {
			return nil, err
		}
		if start == 0 || stop == 0 {
			return nil, errSyntax("\"*\" in a set of known numbers")
		}
		n := int(max(start, stop)-min(start, stop)) + 1
		if n > limit-len(out) {
			return nil, errSyntax("more than " + strconv.Itoa(limit) + " numbers in a set")
		}
		for i := range n {
			if start <= stop {
				out = append(out, start+uint32(i))
			} else {
				out = append(out, start-uint32(i))
			}
		}
	}
	return out, nil
}

// InlineLiteralsOnly reports whether every line break in cmd, a command
// written whole (tag, arguments and the literals inline, without its
// final CRLF), ends a non-synchronising literal's header ("{n+}" or
// "~{n+}") whose n bytes follow, and cmd does not end in a literal's
// header. A command written so can be sent at once; one with any other CR
// or LF would have its rest taken for further commands, or wait for a
// continuation nobody reads.
func InlineLiteralsOnly(cmd string) bool {
	end := 0 // where the text after the last literal's data starts
	for i := 0; i < len(cmd); i++ {
		switch cmd[i] {
		case '\n':
			return false
		case '\r':
		default:
			continue
		}
		if i+1 >= len(cmd) || cmd[i+1] != '\n' || !strings.HasSuffix(cmd[:i], "+}") {
			return false
		}
		open := strings.LastIndexByte(cmd[:i], '{')
		if open < end { // none, or one in the last literal's data
			return false
		}
		n, err := strconv.ParseInt(cmd[open+1:i-2], 10, 64)
		if err != nil || n < 0 || n > int64(len(cmd)-(i+2)) || cmd[open+1] == '+' || cmd[open+1] == '-' {
			return false
		}
		i += 1 + int(n) // past LF and the literal's bytes
		end = i + 1
	}
	// Nor may it end in a literal's header, which would take the final
	// CRLF for its own (a literal's data that ends so is data).
	if open := strings.LastIndexByte(cmd, '{'); open >= end && strings.HasSuffix(cmd, "}") {
		digits := strings.TrimSuffix(cmd[open+1:len(cmd)-1], "+")
		if _, err := strconv.ParseUint(digits, 10, 64); err == nil {
			return false
		}
	}
	return true
}
