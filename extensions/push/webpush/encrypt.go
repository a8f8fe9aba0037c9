package webpush

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// The aes128gcm content coding (RFC 8188) as Web Push uses it (RFC 8291):
// one record, its key derived from an ECDH agreement between a key pair
// made for this message alone and the subscription's key, and from the
// subscription's authentication secret.

const (
	// recordSize is the rs of the header: the largest record a reader
	// must accept. RFC 8291 section 4 caps a push message at 4096 bytes
	// (headerLen + the one record), so the record always fits.
	recordSize = 4096
	// headerLen is salt (16), rs (4), idlen (1) and the sender's
	// uncompressed P-256 key (65).
	headerLen = 16 + 4 + 1 + 65
	// tagLen is AES-GCM's authentication tag.
	tagLen = 16
	// MaxPlaintext is the most a push message can carry (RFC 8291
	// section 4): 4096 bytes of body less the header, the tag and the
	// padding delimiter.
	MaxPlaintext = recordSize - headerLen - tagLen - 1
	// authLen is the length of a subscription's authentication secret.
	authLen = 16
)

// errTooLong refuses a plaintext that would make the body exceed 4096
// bytes, which push services reject.
var errTooLong = errors.New("webpush: message too long for one push")

// encrypt returns the body of a push message carrying plaintext followed
// by pad zero bytes of padding, for the subscription's key uaPublic and
// authentication secret auth. as is the sender's key pair for this
// message alone and salt 16 random bytes; tests pass RFC 8291's.
func encrypt(plaintext []byte, pad int, uaPublic *ecdh.PublicKey, auth []byte, as *ecdh.PrivateKey, salt []byte) ([]byte, error) {
	if len(salt) != 16 || len(auth) != authLen {
		return nil, errors.New("webpush: salt and authentication secret must be 16 bytes")
	}
	if pad < 0 || len(plaintext)+pad > MaxPlaintext {
		return nil, errTooLong
	}
	secret, err := as.ECDH(uaPublic)
	if err != nil {
		return nil, fmt.Errorf("webpush: key agreement: %w", err)
	}
	uaBytes, asBytes := uaPublic.Bytes(), as.PublicKey().Bytes()
	// RFC 8291 section 3.3: the input keying material of the content
	// coding binds the secret to both keys.
	keyInfo := "WebPush: info\x00" + string(uaBytes) + string(asBytes)
	ikm, err := hkdf.Key(sha256.New, secret, auth, keyInfo, 32)
	if err != nil {
		return nil, err
	}
	// RFC 8188 section 2.2 and 2.3.
	prk, err := hkdf.Extract(sha256.New, ikm, salt)
	if err != nil {
		return nil, err
	}
	cek, err := hkdf.Expand(sha256.New, prk, "Content-Encoding: aes128gcm\x00", 16)
	if err != nil {
		return nil, err
	}
	nonce, err := hkdf.Expand(sha256.New, prk, "Content-Encoding: nonce\x00", 12)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}

	body := make([]byte, headerLen, headerLen+len(plaintext)+1+pad+tagLen)
	copy(body, salt)
	binary.BigEndian.PutUint32(body[16:], recordSize)
	body[20] = byte(len(asBytes))
	copy(body[21:], asBytes)
	// The one record is also the last: its padding delimiter is 2
	// (RFC 8188 section 2), and the sequence number 0 leaves the nonce
	// as derived.
	rec := make([]byte, len(plaintext)+1+pad)
	copy(rec, plaintext)
	rec[len(plaintext)] = 2
	return gcm.Seal(body, nonce, rec, nil), nil
}
