//! Owns the agent session tokens: HS256 JWTs with the prototype's claims
//! ([`AgentClaims`]). It must never accept another algorithm, never issue a token living
//! longer than [`MAX_TOKEN_TTL`], and never expose the signing secret.

use crate::error::HubError;
use crate::secret::Secret;
use edge_protocol::api::AgentClaims;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::time::Duration;

/// Fifteen minutes: a stolen token is only good briefly; the agent refreshes before expiry.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(900);

/// Why a presented token is refused; the two cases tell the agent different things to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl JwtKeys {
    /// `ttl` above [`MAX_TOKEN_TTL`] is lowered to it.
    pub fn new(secret: &Secret, ttl: Duration) -> JwtKeys {
        let bytes = secret.expose().as_bytes();
        JwtKeys {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            ttl: ttl.min(MAX_TOKEN_TTL),
        }
    }

    /// Returns the token and its expiry (Unix seconds).
    pub fn issue(&self, agent_id: &str, creator_id: &str, now_secs: i64) -> Result<(String, i64), HubError> {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(900);
        let claims = AgentClaims {
            agent_id: agent_id.to_owned(),
            creator_id: creator_id.to_owned(),
            iat: now_secs,
            exp: now_secs + ttl,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, claims.exp))
    }

    pub fn verify(&self, token: &str) -> Result<AgentClaims, TokenRejection> {
        let mut validation = Validation::new(Algorithm::HS256);
        // The hub both issues and checks these tokens against one clock: no skew to allow for.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<AgentClaims>(token, &self.decoding, &validation).map(|data| data.claims).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => TokenRejection::Expired,
                _ => TokenRejection::Invalid(e.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_expire() {
        let keys = JwtKeys::new(&Secret::new("a-test-secret-that-is-long-enough!!"), Duration::from_secs(3600));
        let now = crate::crypto::now_secs();
        let (token, exp) = keys.issue("agt_1", "creator-1", now).unwrap();
        assert_eq!(exp, now + 900, "TTL is capped at 15 minutes");
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.agent_id.as_str(), claims.creator_id.as_str()), ("agt_1", "creator-1"));

        let (old, _) = keys.issue("agt_1", "creator-1", now - 2000).unwrap();
        assert_eq!(keys.verify(&old), Err(TokenRejection::Expired));

        let other = JwtKeys::new(&Secret::new("another-secret-entirely-different"), Duration::from_secs(60));
        assert!(matches!(other.verify(&token), Err(TokenRejection::Invalid(_))));
        assert!(matches!(keys.verify("not.a.jwt"), Err(TokenRejection::Invalid(_))));
    }
}
