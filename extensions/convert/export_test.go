package convert

// SetLimits lowers MaxConvertMessages and MaxConvertParts for a test.
func SetLimits(e *Extension, messages, parts int) { e.maxMessages, e.maxParts = messages, parts }

// SetChunk lowers the in-memory part size for a test.
func SetChunk(e *Extension, n int) { e.chunk = n }
