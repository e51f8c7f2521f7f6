package bus

import (
	"encoding/base64"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Signature headers: the ed25519 signature (base64url) over the exact envelope bytes, and
// the public nkey of the signer.
const (
	HeaderSignature = "Edge-Signature"
	HeaderSigner    = "Edge-Signer"
)

// SignMsg signs msg.Data with id and sets the signature headers.
func SignMsg(msg *nats.Msg, id *Identity) error {
	sig, err := id.Sign(msg.Data)
	if err != nil {
		return err
	}
	if msg.Header == nil {
		msg.Header = nats.Header{}
	}
	msg.Header.Set(HeaderSigner, id.PublicKey())
	msg.Header.Set(HeaderSignature, base64.RawURLEncoding.EncodeToString(sig))
	return nil
}

// VerifySignature checks that data carries a valid signature by a signer that trusted
// accepts. It returns the signer's key, or a security error (1800) saying what is wrong.
func VerifySignature(data []byte, h nats.Header, trusted func(signer string) bool) (string, error) {
	signer, sig := h.Get(HeaderSigner), h.Get(HeaderSignature)
	if signer == "" || sig == "" {
		return "", Errorf(CodeSecurity, "unsigned: %s and %s headers are required", HeaderSigner, HeaderSignature)
	}
	if !nkeys.IsValidPublicUserKey(signer) {
		return "", Errorf(CodeSecurity, "signer %q is not a public user nkey", signer)
	}
	if !trusted(signer) {
		return signer, Errorf(CodeSecurity, "signer %s is not trusted", signer)
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return signer, Errorf(CodeSecurity, "signature is not base64url: %v", err)
	}
	pub, err := nkeys.FromPublicKey(signer)
	if err != nil {
		return signer, Errorf(CodeSecurity, "signer key: %v", err)
	}
	if err := pub.Verify(data, raw); err != nil {
		return signer, Errorf(CodeSecurity, "signature does not match the envelope (altered or forged)")
	}
	return signer, nil
}

// CheckFreshness refuses a signed envelope stamped in the future (beyond skew) or older
// than maxAge: a captured command cannot be replayed later. nowMS and the stamp are unix ms.
func CheckFreshness(stampMS, nowMS, maxAgeMS, skewMS int64) error {
	switch {
	case stampMS > nowMS+skewMS:
		return Errorf(CodeSecurity, "issued %d ms in the future (clock skew allowance %d ms)", stampMS-nowMS, skewMS)
	case nowMS-stampMS > maxAgeMS:
		return Errorf(CodeSecurity, "stale: issued %s ago, outside the freshness window of %s", fmtMS(nowMS-stampMS), fmtMS(maxAgeMS))
	}
	return nil
}

func fmtMS(ms int64) string { return fmt.Sprintf("%.1fs", float64(ms)/1000) }
