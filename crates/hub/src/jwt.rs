//! Owns the agent session tokens: HS256 JWTs with the prototype's claims
//! ([`AgentClaims`]). It must never accept another algorithm, never issue a token living
//! longer than [`MAX_TOKEN_TTL`], never accept one without `iat` or whose lifetime
//! (`exp - iat`) exceeds the configured TTL (a long-lived token signed with a leaked secret
//! stays refused), and never expose the signing secret.

use crate::error::HubError;
use crate::secret::Secret;
use edge_protocol::api::AgentClaims;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
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

    /// The longest lifetime (`exp - iat`) a presented token may have: the configured TTL.
    pub fn max_lifetime(&self) -> Duration {
        self.ttl
    }

    pub fn verify(&self, token: &str) -> Result<AgentClaims, TokenRejection> {
        self.verify_at(token, crate::crypto::now_secs())
    }

    fn verify_at(&self, token: &str, now_secs: i64) -> Result<AgentClaims, TokenRejection> {
        let mut validation = Validation::new(Algorithm::HS256);
        // The hub both issues and checks these tokens against one clock: no skew to allow for.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<PresentedClaims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenRejection::Expired,
                _ => TokenRejection::Invalid(e.to_string()),
            })?;
        // `AgentClaims` defaults a missing `iat` to 0 for old readers; here it must be there.
        let Some(iat) = claims.iat else {
            return Err(TokenRejection::Invalid("the token has no `iat` (issued-at) claim".to_owned()));
        };
        if iat > now_secs + MAX_IAT_AHEAD_SECS {
            return Err(TokenRejection::Invalid("the token's `iat` lies in the future".to_owned()));
        }
        let max = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let lifetime = claims.exp.saturating_sub(iat);
        if lifetime > max {
            return Err(TokenRejection::Invalid(format!(
                "the token lives {lifetime} s, more than this hub's maximum of {max} s"
            )));
        }
        Ok(AgentClaims { agent_id: claims.agent_id, creator_id: claims.creator_id, exp: claims.exp, iat })
    }
}

/// Hubs sharing a database may run on machines whose clocks differ by a few seconds.
const MAX_IAT_AHEAD_SECS: i64 = 30;

/// The claims as presented, `iat` optional so its absence can be named.
#[derive(Deserialize)]
struct PresentedClaims {
    #[serde(rename = "agentId")]
    agent_id: String,
    #[serde(rename = "creatorId")]
    creator_id: String,
    exp: i64,
    iat: Option<i64>,
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

    fn signed(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
            .unwrap()
    }

    #[test]
    fn signed_tokens_without_iat_or_living_too_long_are_refused() {
        let secret = "a-test-secret-that-is-long-enough!!";
        let keys = JwtKeys::new(&Secret::new(secret), Duration::from_secs(300));
        let now = crate::crypto::now_secs();
        let claims = |iat: Option<i64>, exp: i64| {
            let mut c = serde_json::json!({"agentId": "agt_1", "creatorId": "c", "exp": exp});
            if let Some(iat) = iat {
                c["iat"] = iat.into();
            }
            c
        };
        assert!(keys.verify(&signed(secret, claims(Some(now), now + 300))).is_ok());
        let refused = |token: String| match keys.verify(&token) {
            Err(TokenRejection::Invalid(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(refused(signed(secret, claims(None, now + 60))).contains("iat"));
        assert!(refused(signed(secret, claims(Some(now), now + 301))).contains("maximum of 300 s"));
        assert!(refused(signed(secret, claims(Some(now - 86_400), now + 365 * 86_400))).contains("maximum"));
        assert!(refused(signed(secret, claims(Some(now + 3600), now + 3700))).contains("future"));
    }
}
