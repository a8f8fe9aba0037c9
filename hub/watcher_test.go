package hub

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

func response(t *testing.T, line string) *upstream.Response {
	t.Helper()
	h, err := imapcodec.ParseResponseHead([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return &upstream.Response{Head: h, Segments: []imapcodec.Segment{{Text: []byte(line)}}}
}

// The watcher follows its connection's message sequence through whatever
// the upstream says, in whatever order, during its own FETCH commands too:
// a flag change reported twice, a new message reported before it was
// fetched, an expunge of a message not fetched yet, an expunge during the
// listing.
func TestWatcherFollowsSequence(t *testing.T) {
	type want struct {
		view      []uint32
		upserts   []string // "uid:flags"
		expunged  []uint32
		needFetch bool
	}
	for _, tc := range []struct {
		name  string
		view  []uint32
		lines []string
		want  want
	}{{
		name: "listing with a repeated FETCH and an expunge",
		lines: []string{
			"* 3 EXISTS",
			`* 1 FETCH (UID 10 FLAGS ())`,
			`* 2 FETCH (UID 11 FLAGS (\Seen))`,
			`* 2 FETCH (FLAGS (\Seen \Flagged) UID 11)`,
			`* 3 FETCH (UID 12 FLAGS ())`,
			"* 2 EXPUNGE",
		},
		want: want{view: []uint32{10, 12}, upserts: []string{"10:", `11:\Seen`, `11:\Seen \Flagged`, "12:"}, expunged: []uint32{11}, needFetch: true},
	}, {
		name: "new message reported before and by its fetch",
		view: []uint32{10, 11},
		lines: []string{
			"* 3 EXISTS",
			`* 3 FETCH (UID 12 FLAGS (\Seen))`, // unsolicited: someone set \Seen
			`* 3 FETCH (UID 12 FLAGS (\Seen))`, // the fetch's answer
		},
		want: want{view: []uint32{10, 11, 12}, upserts: []string{`12:\Seen`, `12:\Seen`}, needFetch: true},
	}, {
		name: "expunge of a message not fetched yet",
		view: []uint32{10, 11},
		lines: []string{
			"* 4 EXISTS",
			"* 3 EXPUNGE",
			`* 3 FETCH (UID 13 FLAGS ())`,
			"* 1 EXPUNGE",
		},
		want: want{view: []uint32{11, 13}, upserts: []string{"13:"}, expunged: []uint32{10}, needFetch: true},
	}, {
		name: "flags without UID of a known and of an unknown message",
		view: []uint32{10, 11},
		lines: []string{
			"* 3 EXISTS",
			`* 2 FETCH (FLAGS (\Answered))`,
			`* 3 FETCH (FLAGS (\Answered))`,
		},
		want: want{view: []uint32{10, 11, 0}, upserts: []string{`11:\Answered`}, needFetch: true},
	}, {
		name: "FETCH without flags fills nothing; out of range is ignored",
		view: []uint32{10},
		lines: []string{
			"* 2 EXISTS",
			`* 2 FETCH (UID 11)`,
			"* 5 EXPUNGE",
			"* 0 EXPUNGE",
			"* 1 EXISTS",
		},
		want: want{view: []uint32{10, 0}, needFetch: true},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			w := &watch{view: append([]uint32(nil), tc.view...)}
			for _, l := range tc.lines {
				w.handle(response(t, l))
			}
			got := want{view: w.view, expunged: w.batch.Expunged, needFetch: w.needFetch}
			for _, m := range w.batch.Upsert {
				got.upserts = append(got.upserts, fmt.Sprintf("%d:%s", m.UID, strings.Join(m.Flags, " ")))
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
