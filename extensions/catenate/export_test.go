package catenate

// SetHook makes e call f at the named points of a command (tests only).
func SetHook(e *Extension, f func(point string)) { e.hook = f }
