package urlfetch

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// Spool is where data is put together before its size must be told (a
// CATENATE message, MULTIAPPEND's messages, a BINARY APPEND re-encoded):
// written in order, read back by sections (io.NewSectionReader over the
// Spool, an io.ReaderAt).
//
// The first SpoolMemory bytes stay in memory, in a buffer shared through
// a pool; more move the whole spool to a file. Every APPEND over an
// upstream without MULTIAPPEND passes through a spool (extensions/
// catenate), and a file for each (create, unlink, write, read back,
// close) cost a small message about 0.08 ms of the command's latency,
// with a 32 KiB copy buffer allocated on top (issue 20). The memory is
// bounded twice: per spool by SpoolMemory, and for the whole process by
// spoolMemoryTotal; a spool that finds the total taken starts in a file,
// as every spool used to. The files are bounded per spool by the
// caller's limits on a message, and for the whole process by
// SetSpoolDiskTotal: a write past it fails with ErrSpoolFull (a client
// with many connections, each trickling a message of the largest size,
// would otherwise fill the disk). Each owner (an account) may hold at
// most SetSpoolDiskPerOwner of it, so that one account trickling uploads
// on many sessions cannot hold the whole total and have every other
// account's large APPENDs refused.
type Spool struct {
	dir   string
	owner string
	mem   *[]byte // the data while it is in memory (cap SpoolMemory), else nil
	f     *os.File
	size  int64
	disk  int64 // bytes of the file counted in spoolDiskUsed
	err   error // the first write error
}

// DefaultSpoolDiskTotal is SetSpoolDiskTotal's default: sixteen messages
// of the largest default APPEND (64 MiB) at once.
const DefaultSpoolDiskTotal = 1 << 30

// ErrSpoolFull is a spool write refused because the files of all spools
// together would pass SetSpoolDiskTotal, or those of its owner
// SetSpoolDiskPerOwner.
var ErrSpoolFull = errors.New("urlfetch: the spools' disk space is taken")

// DefaultSpoolDiskPerOwner is SetSpoolDiskPerOwner's default: a quarter
// of DefaultSpoolDiskTotal, four messages of the largest default APPEND.
const DefaultSpoolDiskPerOwner = DefaultSpoolDiskTotal / 4

var (
	spoolDiskTotal, spoolDiskPerOwner atomic.Int64

	// spoolDisk counts the bytes of spool files, in all and by owner.
	spoolDisk struct {
		sync.Mutex
		used    int64
		byOwner map[string]int64
	}
)

func init() {
	spoolDiskTotal.Store(DefaultSpoolDiskTotal)
	spoolDiskPerOwner.Store(DefaultSpoolDiskPerOwner)
}

// SetSpoolDiskTotal bounds the bytes all spool files of the process hold
// at once; n <= 0 restores DefaultSpoolDiskTotal.
func SetSpoolDiskTotal(n int64) {
	if n <= 0 {
		n = DefaultSpoolDiskTotal
	}
	spoolDiskTotal.Store(n)
}

// SetSpoolDiskPerOwner bounds the bytes the spool files of one owner (the
// owner NewSpool was given) hold at once; n <= 0 restores
// DefaultSpoolDiskPerOwner.
func SetSpoolDiskPerOwner(n int64) {
	if n <= 0 {
		n = DefaultSpoolDiskPerOwner
	}
	spoolDiskPerOwner.Store(n)
}

// reserve counts n more bytes of the spool's file against the total and
// its owner's share.
func (sp *Spool) reserve(n int) error {
	d := &spoolDisk
	d.Lock()
	defer d.Unlock()
	if d.used+int64(n) > spoolDiskTotal.Load() || d.byOwner[sp.owner]+int64(n) > spoolDiskPerOwner.Load() {
		return ErrSpoolFull
	}
	if d.byOwner == nil {
		d.byOwner = map[string]int64{}
	}
	d.used += int64(n)
	d.byOwner[sp.owner] += int64(n)
	sp.disk += int64(n)
	return nil
}

// releaseDisk gives the spool's file bytes back.
func (sp *Spool) releaseDisk() {
	if sp.disk == 0 {
		return
	}
	d := &spoolDisk
	d.Lock()
	d.used -= sp.disk
	if left := d.byOwner[sp.owner] - sp.disk; left > 0 {
		d.byOwner[sp.owner] = left
	} else {
		delete(d.byOwner, sp.owner)
	}
	d.Unlock()
	sp.disk = 0
}

// SpoolDiskUsed returns the bytes of all spool files, and of owner's
// (for metrics and tests).
func SpoolDiskUsed(owner string) (all, owners int64) {
	d := &spoolDisk
	d.Lock()
	defer d.Unlock()
	return d.used, d.byOwner[owner]
}

// SpoolMemory is how much of a spool is kept in memory: a typical
// message, far below the limits a message may reach.
const SpoolMemory = 16 << 10

// spoolMemoryTotal bounds the memory all spools of the process hold at
// once (1,024 spools in memory).
const spoolMemoryTotal = 16 << 20

var (
	spoolMemoryUsed atomic.Int64
	spoolBuffers    = sync.Pool{New: func() any { b := make([]byte, 0, SpoolMemory); return &b }}
	copyBuffers     = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)

// NewSpool returns an empty spool whose file, if it needs one, is made in
// dir ("" for os.TempDir()) and unlinked at once: it lives as long as it
// is open, and a crash leaves nothing behind. Its file counts against
// owner's share (SetSpoolDiskPerOwner): the session's account. The
// caller closes it.
func NewSpool(dir, owner string) (*Spool, error) {
	sp := &Spool{dir: dir, owner: owner}
	if spoolMemoryUsed.Add(SpoolMemory) <= spoolMemoryTotal {
		sp.mem = spoolBuffers.Get().(*[]byte)
		return sp, nil
	}
	spoolMemoryUsed.Add(-SpoolMemory)
	if err := sp.toFile(); err != nil {
		return nil, err
	}
	return sp, nil
}

// toFile moves the spool to a file.
func (sp *Spool) toFile() error {
	f, err := os.CreateTemp(sp.dir, "lemonproxy-spool-")
	if err != nil {
		return err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return err
	}
	sp.f = f
	if sp.mem == nil {
		return nil
	}
	err = sp.reserve(len(*sp.mem))
	if err == nil {
		_, err = f.Write(*sp.mem)
	}
	sp.freeMemory()
	return err
}

// freeMemory gives the in-memory buffer back.
func (sp *Spool) freeMemory() {
	*sp.mem = (*sp.mem)[:0]
	spoolBuffers.Put(sp.mem)
	sp.mem = nil
	spoolMemoryUsed.Add(-SpoolMemory)
}

// Write appends p.
func (sp *Spool) Write(p []byte) (int, error) {
	if sp.err != nil {
		return 0, sp.err
	}
	if sp.mem != nil {
		if len(*sp.mem)+len(p) <= SpoolMemory {
			*sp.mem = append(*sp.mem, p...)
			sp.size += int64(len(p))
			return len(p), nil
		}
		if err := sp.toFile(); err != nil {
			return 0, sp.fail(err)
		}
	}
	if sp.f == nil {
		return 0, os.ErrClosed
	}
	if err := sp.reserve(len(p)); err != nil {
		return 0, sp.fail(err)
	}
	n, err := sp.f.Write(p)
	sp.size += int64(n)
	if err != nil {
		return n, sp.fail(err)
	}
	return n, nil
}

// fail records a write's failure and gives back what the spool holds: it
// is of no more use (its command is refused), and the rest of the
// command, which a client may take its time over, is read and dropped
// before Close.
func (sp *Spool) fail(err error) error {
	sp.err = err
	if sp.mem != nil {
		sp.freeMemory()
	}
	sp.releaseDisk()
	if sp.f != nil {
		sp.f.Close()
		sp.f = nil
	}
	return err
}

// ReadFrom appends what r yields until its end (io.ReaderFrom, so that
// io.Copy into a spool reads straight into its memory and allocates no
// copy buffer). An error of r is returned but is not the spool's (Err).
func (sp *Spool) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for sp.mem != nil && sp.err == nil {
		b := *sp.mem
		if len(b) == cap(b) {
			// Full: one more byte decides whether a file is needed.
			var one [1]byte
			n, err := io.ReadFull(r, one[:])
			if n == 0 {
				return total, eofIsNil(err)
			}
			if _, werr := sp.Write(one[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
			break
		}
		n, err := r.Read(b[len(b):cap(b)])
		*sp.mem = b[:len(b)+n]
		sp.size += int64(n)
		total += int64(n)
		if err != nil {
			return total, eofIsNil(err)
		}
	}
	if sp.err != nil {
		return total, sp.err
	}
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	n, err := io.CopyBuffer(writerOnly{sp}, r, *buf)
	return total + n, err
}

// writerOnly hides Spool's ReadFrom from io.CopyBuffer.
type writerOnly struct{ io.Writer }

func eofIsNil(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// ReadAt reads back what was written (io.ReaderAt: it does not move the
// write position).
func (sp *Spool) ReadAt(p []byte, off int64) (int, error) {
	if sp.mem == nil {
		if sp.f == nil {
			return 0, os.ErrClosed
		}
		return sp.f.ReadAt(p, off)
	}
	b := *sp.mem
	if off < 0 {
		return 0, errors.New("urlfetch: negative spool offset")
	}
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Size is how much has been written.
func (sp *Spool) Size() int64 { return sp.size }

// Err is the first write error, which tells a failure of the spool from
// one of the writer's source.
func (sp *Spool) Err() error { return sp.err }

// InFile reports whether the spool has moved to a file.
func (sp *Spool) InFile() bool { return sp.f != nil }

// Close gives the memory back, or closes (and so removes) the file and
// gives its bytes back to the total.
func (sp *Spool) Close() error {
	if sp.mem != nil {
		sp.freeMemory()
	}
	sp.releaseDisk()
	if sp.f != nil {
		f := sp.f
		sp.f = nil
		return f.Close()
	}
	return nil
}
