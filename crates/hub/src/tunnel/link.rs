//! The link between hub instances on one database: a proxy client on instance A may choose
//! an agent whose tunnel is open on instance B. A then asks B, over one HTTP/1.1 upgrade
//! to [`RELAY_PATH`] per stream, to open that stream on its local tunnel; B answers with the
//! agent's own [`Answer`] and relays bytes until either side ends. A plain upgrade, not a
//! WebSocket: the connection after `101` is the stream itself, so a client's half-close
//! reaches the agent as it does through a local tunnel. To an instance advertising
//! `https://` the link speaks TLS, verified against the public roots and `--instance-ca`.
//!
//! The credential is a short-lived HS256 token ([`LINK_TOKEN_TTL`]) naming the calling and
//! the called instance, the agent and the target, used once. It is signed with a key
//! derived from the hub's JWT secret (which every instance on one database shares: it lives
//! in the database's settings, or every instance gets the same `EDGE_HUB_JWT_SECRET`), under
//! a label of its own, so an agent's session token never passes as a link token nor the
//! reverse. Whoever holds the JWT secret can already mint any agent's token; the link adds
//! no new secret and trusts nothing the other instance says beyond what the token signs.

use super::{OpenError, TunnelIo, ANSWER_TIMEOUT};
use crate::api::{bearer_token, AppState, Failure};
use crate::secret::Secret;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use edge_tunnel::open::{self, Answer, Target};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{info, warn};

/// The internal endpoint another instance opens a stream through.
pub const RELAY_PATH: &str = "/v1/hub/tunnel-relay";
/// The `Upgrade` protocol token of the link.
pub const UPGRADE_TOKEN: &str = "edge-tunnel-relay";
/// How long a link token is good for: it is used at once, by a machine.
pub const LINK_TOKEN_TTL: Duration = Duration::from_secs(30);
/// How long an instance may take to accept the link's TCP connection and answer `101`.
pub const LINK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The audience claim: what tells a link token from anything else signed with the key.
const AUDIENCE: &str = "edge-hub-instance-link";
/// Hubs sharing a database may run on machines whose clocks differ by a few seconds.
const MAX_CLOCK_SKEW_SECS: i64 = 30;
/// The longest response head the caller reads from the other instance.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// What a link token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    pub aud: String,
    /// The calling instance's id (for the called instance's log).
    pub from: String,
    /// The called instance's id: a token is good at that instance only.
    pub to: String,
    #[serde(rename = "agentId")]
    pub agent_id: String,
    pub target: Target,
    /// Random: a token opens one stream, once.
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

/// Why a link token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkRejection {
    #[error("the instance credential is not valid: {0}")]
    Invalid(String),
    #[error("the instance credential was issued for another instance ({0})")]
    WrongInstance(String),
    #[error("the instance credential was already used")]
    Replayed,
}

/// Signs and checks link tokens; remembers the ids of tokens used until they expire.
pub struct LinkKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    used: Mutex<HashMap<String, i64>>,
}

impl LinkKeys {
    pub fn new(jwt_secret: &Secret) -> LinkKeys {
        // A key of its own, derived from the shared secret: HMAC keys reused across purposes
        // would let a token of one kind pass as the other if their claims ever overlapped.
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"edge-hub instance link v1\0");
        hasher.update(jwt_secret.expose().as_bytes());
        let key = hasher.finalize();
        LinkKeys {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            used: Mutex::new(HashMap::new()),
        }
    }

    /// A token for one stream from instance `from` through instance `to`.
    pub fn issue(&self, from: &str, to: &str, agent_id: &str, target: &Target) -> Result<String, OpenError> {
        let now = crate::crypto::now_secs();
        let claims = LinkClaims {
            aud: AUDIENCE.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            agent_id: agent_id.to_owned(),
            target: target.clone(),
            jti: crate::crypto::new_nonce().map_err(|e| OpenError::Link(format!("no randomness for a token: {e}")))?,
            iat: now,
            exp: now + LINK_TOKEN_TTL.as_secs() as i64,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| OpenError::Link(format!("cannot sign the instance credential: {e}")))
    }

    /// The claims of a token addressed to instance `me`, used for the first time.
    pub fn verify(&self, token: &str, me: &str) -> Result<LinkClaims, LinkRejection> {
        let now = crate::crypto::now_secs();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = MAX_CLOCK_SKEW_SECS as u64;
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        let claims = jsonwebtoken::decode::<LinkClaims>(token, &self.decoding, &validation)
            .map_err(|e| LinkRejection::Invalid(e.to_string()))?
            .claims;
        if claims.iat > now + MAX_CLOCK_SKEW_SECS || claims.exp - claims.iat > LINK_TOKEN_TTL.as_secs() as i64 {
            return Err(LinkRejection::Invalid("its lifetime is not one this hub issues".to_owned()));
        }
        if claims.to != me {
            return Err(LinkRejection::WrongInstance(claims.to));
        }
        let mut used = self.used.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        used.retain(|_, exp| *exp + MAX_CLOCK_SKEW_SECS >= now);
        if used.insert(claims.jti.clone(), claims.exp).is_some() {
            return Err(LinkRejection::Replayed);
        }
        Ok(claims)
    }
}

/// Instances whose link just failed to connect (they died, or their network did): their
/// routes are passed over until they would have gone stale anyway, so a client choosing by
/// creator or label gets a live agent instead of a dead instance's leftover again and again.
/// An instance that comes back restarts under a new id; one that was only unreachable is
/// chosen again once its mark ends.
#[derive(Default)]
pub struct GoneInstances(Mutex<HashMap<String, std::time::Instant>>);

impl GoneInstances {
    pub fn mark(&self, instance_id: &str, for_: Duration) {
        let now = std::time::Instant::now();
        let mut gone = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        gone.retain(|_, until| *until > now);
        gone.insert(instance_id.to_owned(), now + for_);
    }

    pub fn contains(&self, instance_id: &str) -> bool {
        let gone = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        gone.get(instance_id).is_some_and(|until| *until > std::time::Instant::now())
    }
}

/// This instance as the others see it.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Random per start: a restarted instance is a new one (its old routes are not its).
    pub id: String,
    /// `http(s)://host:port` other instances reach this one at (`--advertise-url`).
    pub url: String,
}

/// `GET /v1/hub/tunnel-relay` with `Upgrade: edge-tunnel-relay`: opens the stream the
/// token names on this instance's tunnel and relays it. Nothing is opened before the token
/// has been checked.
pub async fn relay_endpoint(State(app): State<AppState>, mut request: Request) -> Response {
    let unauthorized = |why: String| Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", why).into_response();
    let Some(token) = bearer_token(request.headers()) else {
        return unauthorized(
            "this endpoint is for other hub instances: send their link token as `Authorization: Bearer`".to_owned(),
        );
    };
    let claims = match app.link.verify(token, &app.instance.id) {
        Ok(claims) => claims,
        Err(e) => {
            warn!(error = %e, "instance link refused");
            return unauthorized(format!("{e}; all instances on one database must share the JWT secret"));
        }
    };
    let asks_upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(UPGRADE_TOKEN));
    if !asks_upgrade {
        let message = format!("this endpoint needs `Connection: upgrade` and `Upgrade: {UPGRADE_TOKEN}`");
        return Failure::new(StatusCode::UPGRADE_REQUIRED, "upgrade_required", message).into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let stop = app.shutdown.clone();
    let tasks = app.sessions.clone();
    tasks.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return warn!(error = %e, "instance link upgrade failed"),
        };
        let mut link = hyper_util::rt::TokioIo::new(upgraded);
        let opened = match app.tunnels.get(&claims.agent_id) {
            Some(tunnel) => tunnel.open(claims.target.clone()).await,
            None => Err(OpenError::NoTunnel),
        };
        let answer = match &opened {
            Ok(_) => Answer::ok(),
            Err(OpenError::NoTunnel) => Answer::refused("NO_AGENT", OpenError::NoTunnel.to_string()),
            Err(OpenError::Refused { code, message }) => Answer::refused(code.clone(), message.clone()),
            Err(other) => Answer::refused("NETWORK", other.to_string()),
        };
        if open::write(&mut link, &answer).await.is_err() {
            return;
        }
        let Ok(stream) = opened else { return };
        info!(from = %claims.from, agent_id = %claims.agent_id, target = %claims.target, "stream relayed for another instance");
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = super::relay(&app, &claims.agent_id, &mut link, super::Opened { io: Box::new(stream), metered: true }, &[]) => {}
        }
    });
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_TOKEN));
    response
}

/// A stream to `target` through `agent_id`'s tunnel on the instance at `url` (id
/// `instance_id`), past the agent's answer.
pub async fn open_remote(
    app: &AppState,
    url: &str,
    instance_id: &str,
    agent_id: &str,
    target: Target,
) -> Result<Box<dyn TunnelIo>, OpenError> {
    let parsed = url::Url::parse(url).map_err(|e| OpenError::Link(format!("{url:?} is not a URL: {e}")))?;
    let tls = match parsed.scheme() {
        "http" => false,
        "https" => true,
        other => {
            return Err(OpenError::Link(format!(
                "instance {instance_id} advertises {url}: a link speaks http:// or https://, not {other}://"
            )))
        }
    };
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let token = app.link.issue(&app.instance.id, instance_id, agent_id, &target)?;
    let handshake = async {
        let bare_host = host.trim_matches(['[', ']']).to_owned();
        let tcp = tokio::net::TcpStream::connect((bare_host.as_str(), port))
            .await
            .map_err(|e| OpenError::InstanceGone(format!("instance {instance_id} at {url} does not answer: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut tcp: Box<dyn TunnelIo> = if tls {
            let name = rustls::pki_types::ServerName::try_from(bare_host.clone())
                .map_err(|e| OpenError::Link(format!("instance {instance_id} at {url}: not a TLS server name: {e}")))?;
            // A failed handshake is not a dead instance: its certificate is not trusted
            // here, which the operator must fix (--instance-ca).
            Box::new(app.link_tls.connect(name, tcp).await.map_err(|e| {
                OpenError::Link(format!(
                    "instance {instance_id} at {url}: TLS failed ({e}); give every instance --instance-ca with \
                     the CA that signed the others' certificates"
                ))
            })?)
        } else {
            Box::new(tcp)
        };
        let authority = parsed.port().map_or(host.clone(), |p| format!("{host}:{p}"));
        let request = format!(
            "GET {RELAY_PATH} HTTP/1.1\r\nHost: {authority}\r\nConnection: upgrade\r\nUpgrade: {UPGRADE_TOKEN}\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| OpenError::InstanceGone(format!("instance {instance_id} at {url} closed the link: {e}")))?;
        let head = read_response_head(&mut tcp)
            .await
            .map_err(|e| OpenError::InstanceGone(format!("instance {instance_id} at {url}: {e}")))?;
        let status = head.split(' ').nth(1).unwrap_or_default();
        match status {
            "101" => Ok(tcp),
            "401" => Err(OpenError::Link(format!(
                "instance {instance_id} at {url} refused this instance's credential: every instance on one \
                 database must share the JWT secret"
            ))),
            other => Err(OpenError::Link(format!("instance {instance_id} at {url} answered HTTP {other} to the link"))),
        }
    };
    let mut tcp = tokio::time::timeout(LINK_CONNECT_TIMEOUT, handshake).await.map_err(|_| {
        OpenError::InstanceGone(format!(
            "instance {instance_id} at {url} did not answer within {LINK_CONNECT_TIMEOUT:?}"
        ))
    })??;
    // The other instance waits up to ANSWER_TIMEOUT for the agent itself.
    let wait = ANSWER_TIMEOUT + LINK_CONNECT_TIMEOUT;
    let answer: Answer =
        tokio::time::timeout(wait, open::read(&mut tcp)).await.map_err(|_| OpenError::Timeout(wait))??;
    match (answer.ok, answer.code.as_deref()) {
        (true, _) => Ok(tcp),
        (false, Some("NO_AGENT")) => Err(OpenError::NoTunnel),
        (false, _) => Err(OpenError::Refused {
            code: answer.code.unwrap_or_else(|| "REFUSED".to_owned()),
            message: answer.message.unwrap_or_default(),
        }),
    }
}

/// Reads up to the blank line, byte by byte so no byte of the stream after it is taken.
async fn read_response_head(tcp: &mut (impl tokio::io::AsyncRead + Unpin)) -> Result<String, String> {
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(format!("its response head is over {MAX_RESPONSE_HEAD} bytes"));
        }
        let byte = tcp.read_u8().await.map_err(|e| format!("the link ended before its response: {e}"))?;
        head.push(byte);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::Connect { host: "example.com".into(), port: 443 }
    }

    #[test]
    fn a_token_opens_once_at_its_instance_and_only_with_the_shared_key() {
        let keys = LinkKeys::new(&Secret::new("s".repeat(40)));
        let token = keys.issue("hub_a", "hub_b", "agt_1", &target()).unwrap();
        assert_eq!(keys.verify(&token, "hub_c"), Err(LinkRejection::WrongInstance("hub_b".into())));
        let claims = keys.verify(&token, "hub_b").unwrap();
        assert_eq!((claims.agent_id.as_str(), claims.target), ("agt_1", target()));
        assert_eq!(keys.verify(&token, "hub_b"), Err(LinkRejection::Replayed));

        let other = LinkKeys::new(&Secret::new("t".repeat(40)));
        let forged = other.issue("hub_a", "hub_b", "agt_1", &target()).unwrap();
        assert!(matches!(keys.verify(&forged, "hub_b"), Err(LinkRejection::Invalid(_))));
        // An agent's session token, signed with the JWT secret itself, is no link token.
        let jwt = crate::jwt::JwtKeys::new(&Secret::new("s".repeat(40)), Duration::from_secs(900));
        let (agent_token, _) = jwt.issue("agt_1", "creator-1", crate::crypto::now_secs()).unwrap();
        assert!(matches!(keys.verify(&agent_token, "hub_b"), Err(LinkRejection::Invalid(_))));
        assert!(matches!(keys.verify("garbage", "hub_b"), Err(LinkRejection::Invalid(_))));
    }
}
