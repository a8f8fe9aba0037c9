package urlfetch

import "os"

// Spool is a file data is put together in before its size must be told
// (a CATENATE message, a URLFETCH literal): written in order, read back
// by sections (File with io.NewSectionReader), never held in memory.
type Spool struct {
	f    *os.File
	size int64
	err  error // the first write error
}

// NewSpool creates the file in dir ("" for os.TempDir()) and unlinks it
// at once: it lives as long as it is open, and a crash leaves nothing
// behind. The caller closes it.
func NewSpool(dir string) (*Spool, error) {
	f, err := os.CreateTemp(dir, "lemonproxy-spool-")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return &Spool{f: f}, nil
}

// Write appends p.
func (sp *Spool) Write(p []byte) (int, error) {
	if sp.err != nil {
		return 0, sp.err
	}
	n, err := sp.f.Write(p)
	sp.size += int64(n)
	if err != nil {
		sp.err = err
	}
	return n, err
}

// Size is how much has been written.
func (sp *Spool) Size() int64 { return sp.size }

// Err is the first write error, which tells a failure of the spool from
// one of the writer's source.
func (sp *Spool) Err() error { return sp.err }

// File is the file, for reading back (ReadAt: it does not move the
// write position).
func (sp *Spool) File() *os.File { return sp.f }

// Close closes (and so removes) the file.
func (sp *Spool) Close() error { return sp.f.Close() }
