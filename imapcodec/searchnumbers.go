package imapcodec

import (
	"slices"
	"strconv"
	"strings"
)

// SearchNumbers reads the numbers of "* SEARCH n n n" (with RFC 7162's
// "(MODSEQ m)" after them, which it ignores), ascending and without
// duplicates. Extra spaces between and after the numbers are taken as one
// (servers have sent a trailing space). It allocates no more than one
// number per two bytes of the line, which the upstream reader has already
// bounded.
func SearchNumbers(text []byte) ([]uint32, error) {
	const head = "* SEARCH"
	if len(text) < len(head) || !strings.EqualFold(string(text[:len(head)]), head) {
		return nil, errSyntax("not a SEARCH response")
	}
	var nums []uint32
	rest := text[len(head):]
	for len(rest) > 0 {
		if rest[0] != ' ' {
			return nil, errSyntax("bad SEARCH response")
		}
		rest = rest[1:]
		if len(rest) == 0 || rest[0] == ' ' {
			continue
		}
		if rest[0] == '(' {
			break // (MODSEQ m): the proxy finds mod-sequences itself
		}
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		n, err := strconv.ParseUint(string(rest[:i]), 10, 32)
		if err != nil || n == 0 {
			return nil, errSyntax("bad number in SEARCH response")
		}
		nums = append(nums, uint32(n))
		rest = rest[i:]
	}
	slices.Sort(nums)
	return slices.Compact(nums), nil
}
