//! Minisign signatures of artifact manifests, checked against the public keys
//! agent.toml trusts (ed25519, through `minisign-verify`). Only prehashed signatures
//! (minisign's default since 0.8) are accepted: the legacy form signs the bytes
//! without hashing them first.

use minisign_verify::{Error as MinisignError, PublicKey, Signature};

/// A refused key or signature, saying which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("{0:?} is not a minisign public key (the base64 line of a minisign.pub file)")]
    BadKey(String),
    #[error("{what} is not a minisign signature: {reason}")]
    BadSignature { what: String, reason: String },
    #[error("{what} is signed by a key that is not in [artifacts] public_keys")]
    UnknownKey { what: String },
    #[error("{what} does not match its signature: it was changed after it was signed")]
    Mismatch { what: String },
    #[error("no key in [artifacts] public_keys: nothing from the store can be trusted")]
    NoKeys,
}

/// The keys signatures are checked against.
#[derive(Debug, Clone)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    /// Parses each key: the base64 line of a `minisign.pub` file, or the whole file
    /// (its comment line, then the key).
    pub fn parse<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<TrustedKeys, SignatureError> {
        let parsed = keys
            .into_iter()
            .map(|key| {
                let line = key.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or_default();
                PublicKey::from_base64(line).map_err(|_| SignatureError::BadKey(key.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if parsed.is_empty() {
            return Err(SignatureError::NoKeys);
        }
        Ok(TrustedKeys(parsed))
    }

    /// Checks that `signature` (the text of a `.minisig` file) is a signature of
    /// `data` by one of the keys; `what` names the data in errors.
    pub fn verify(&self, what: &str, data: &[u8], signature: &str) -> Result<(), SignatureError> {
        let signature = Signature::decode(signature).map_err(|e| SignatureError::BadSignature {
            what: what.to_string(),
            reason: reason(&e),
        })?;
        let mut mismatch = false;
        for key in &self.0 {
            match key.verify(data, &signature, false) {
                Ok(()) => return Ok(()),
                Err(MinisignError::UnexpectedKeyId) => {}
                Err(MinisignError::InvalidSignature) => mismatch = true,
                Err(e) => {
                    return Err(SignatureError::BadSignature {
                        what: what.to_string(),
                        reason: reason(&e),
                    })
                }
            }
        }
        Err(if mismatch {
            SignatureError::Mismatch { what: what.to_string() }
        } else {
            SignatureError::UnknownKey { what: what.to_string() }
        })
    }
}

fn reason(error: &MinisignError) -> String {
    match error {
        MinisignError::InvalidEncoding => "its encoding is invalid".into(),
        MinisignError::UnsupportedLegacyMode => {
            "it is a legacy (not prehashed) signature, which is not accepted".into()
        }
        MinisignError::UnsupportedAlgorithm | MinisignError::UnexpectedAlgorithm => {
            "its algorithm is not minisign's ed25519".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = include_str!("../../tests/fixtures/artifacts/a.pub");
    const KEY_B: &str = include_str!("../../tests/fixtures/artifacts/b.pub");
    const MANIFEST: &[u8] = include_bytes!("../../tests/fixtures/artifacts/manifest.json");
    const SIGNATURE: &str = include_str!("../../tests/fixtures/artifacts/manifest.json.minisig");

    #[test]
    fn a_manifest_signed_by_a_trusted_key_verifies() {
        let keys = TrustedKeys::parse([KEY_B, KEY_A]).unwrap();
        keys.verify("manifest.json", MANIFEST, SIGNATURE).unwrap();
        // The base64 line alone is a key too.
        let line = KEY_A.lines().nth(1).unwrap();
        TrustedKeys::parse([line])
            .unwrap()
            .verify("m", MANIFEST, SIGNATURE)
            .unwrap();
    }

    #[test]
    fn an_unknown_key_a_changed_manifest_and_garbage_are_refused() {
        let only_b = TrustedKeys::parse([KEY_B]).unwrap();
        assert_eq!(
            only_b.verify("m", MANIFEST, SIGNATURE),
            Err(SignatureError::UnknownKey { what: "m".into() })
        );
        let keys = TrustedKeys::parse([KEY_A]).unwrap();
        let mut changed = MANIFEST.to_vec();
        changed[3] ^= 1;
        assert_eq!(
            keys.verify("m", &changed, SIGNATURE),
            Err(SignatureError::Mismatch { what: "m".into() })
        );
        assert!(matches!(
            keys.verify("m", MANIFEST, "not a signature"),
            Err(SignatureError::BadSignature { .. })
        ));
        assert!(matches!(
            TrustedKeys::parse(["RWQnope"]),
            Err(SignatureError::BadKey(_))
        ));
        assert_eq!(TrustedKeys::parse([]).unwrap_err(), SignatureError::NoKeys);
    }

    proptest::proptest! {
        /// Any text as a key or a signature is refused or accepted, never a panic.
        #[test]
        fn any_text_is_handled(key in ".{0,80}", signature in ".{0,300}") {
            let _ = TrustedKeys::parse([key.as_str()]);
            if let Ok(keys) = TrustedKeys::parse([KEY_A]) {
                let _ = keys.verify("m", MANIFEST, &signature);
            }
        }
    }
}
