// Package bodypart finds and reads MIME parts of a message of the
// session's selected mailbox for extensions that serve decoded parts
// (BINARY, RFC 3516; CONVERT, RFC 5259): where a section is in the
// upstream's BODYSTRUCTURE (Resolve, no MIME parser of the proxy's own),
// and its data with the Content-Transfer-Encoding decoded, streamed in
// bounded memory (Source). It lives under extensions/internal so that only
// extensions share it, and one copy of the decoding serves both.
package bodypart
