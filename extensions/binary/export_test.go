package binary

// SetMaxAppend lowers the literal8 APPEND limit for a test.
func SetMaxAppend(e *Extension, n int64) { e.maxAppend = n }

// Reencode exposes reencode to the fuzz target.
var Reencode = reencode
