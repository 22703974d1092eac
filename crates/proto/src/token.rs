//! The tunnel token: everything a connector needs, in one opaque string.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::control::TunnelId;

/// Prefix of every token; the digit is the token format version.
pub const TOKEN_PREFIX: &str = "upt1_";

/// A tunnel secret: 32 random bytes. Its `Debug` never prints the bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelSecret(pub [u8; 32]);

impl fmt::Debug for TunnelSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelSecret(***)")
    }
}

/// What `underpass-edge tunnel create` prints and `underpass run --token` takes.
///
/// Carries the tunnel id, the secret, the edge addresses, the name the edge's certificate is
/// issued for, and the SHA-256 pin of the edge's CA certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelToken {
    /// The tunnel.
    pub tunnel_id: TunnelId,
    /// The tunnel secret (never sent over the wire; only proofs of it are).
    pub secret: TunnelSecret,
    /// Edge addresses, `host:port` each.
    pub edges: Vec<String>,
    /// The TLS server name to ask for and verify.
    pub server_name: String,
    /// SHA-256 of the DER of the edge's CA certificate.
    pub ca_pin: [u8; 32],
}

impl fmt::Debug for TunnelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelToken")
            .field("tunnel_id", &self.tunnel_id)
            .field("secret", &self.secret)
            .field("edges", &self.edges)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A string that is not a valid token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The string does not start with [`TOKEN_PREFIX`].
    #[error("not an Underpass tunnel token (expected it to start with {TOKEN_PREFIX:?})")]
    Prefix,
    /// The string is not valid base64url.
    #[error("tunnel token is not valid base64url")]
    Base64,
    /// The decoded bytes are not a token.
    #[error("tunnel token is corrupt")]
    Corrupt,
    /// The token names no edge address.
    #[error("tunnel token names no edge address")]
    NoEdge,
}

impl TunnelToken {
    /// Encode as `upt1_` followed by base64url (no padding) of the postcard bytes.
    pub fn encode(&self) -> String {
        // Serializing plain data into a Vec cannot fail.
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Decode a token string; surrounding whitespace is ignored.
    pub fn decode(text: &str) -> Result<Self, TokenError> {
        let body = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Prefix)?;
        if body.len() > 16 * 1024 {
            return Err(TokenError::Corrupt);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Base64)?;
        let (token, rest) =
            postcard::take_from_bytes::<TunnelToken>(&bytes).map_err(|_| TokenError::Corrupt)?;
        if !rest.is_empty() {
            return Err(TokenError::Corrupt);
        }
        if token.edges.is_empty() {
            return Err(TokenError::NoEdge);
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TunnelToken {
        TunnelToken {
            tunnel_id: TunnelId([7; 16]),
            secret: TunnelSecret([9; 32]),
            edges: vec!["127.0.0.1:7844".into()],
            server_name: "underpass-edge".into(),
            ca_pin: [3; 32],
        }
    }

    #[test]
    fn round_trip() {
        let token = sample();
        let text = token.encode();
        assert!(text.starts_with(TOKEN_PREFIX));
        assert_eq!(TunnelToken::decode(&format!(" {text}\n")), Ok(token));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(TunnelToken::decode("abc"), Err(TokenError::Prefix));
        assert_eq!(TunnelToken::decode("upt1_!!"), Err(TokenError::Base64));
        assert_eq!(TunnelToken::decode("upt1_AAAA"), Err(TokenError::Corrupt));
        let mut empty = sample();
        empty.edges.clear();
        assert_eq!(
            TunnelToken::decode(&empty.encode()),
            Err(TokenError::NoEdge)
        );
    }

    #[test]
    fn debug_hides_secret() {
        let printed = format!("{:?}", sample());
        assert!(printed.contains("***"));
        assert!(!printed.contains("9, 9"));
    }
}
