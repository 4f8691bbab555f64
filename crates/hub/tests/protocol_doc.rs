//! `docs/protocol.md`'s enrollment and token section must stay true: its worked example's
//! values are recomputed from its private key the way the document says to, and its
//! request bodies, sent verbatim to a real hub, get the answers it shows (issue 17: an
//! outsider needed the source to learn them).

mod common;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

const DOC: &str = include_str!("../../../docs/protocol.md");

/// The fenced block right after `<!-- example: NAME -->`.
fn example(name: &str) -> &'static str {
    let marker = format!("<!-- example: {name} -->");
    let after = &DOC[DOC.find(&marker).unwrap_or_else(|| panic!("docs/protocol.md has no {marker}"))..];
    let fence = after.find("```").expect("a fenced block after the marker");
    let body_start = fence + after[fence..].find('\n').expect("fence line") + 1;
    let body_end = body_start + after[body_start..].find("```").expect("closing fence");
    after[body_start..body_end].trim()
}

fn example_json(name: &str) -> Value {
    serde_json::from_str(example(name)).unwrap_or_else(|e| panic!("example {name} is not JSON: {e}"))
}

/// The `label  value` lines of the values block (labels may contain spaces; values do not).
fn example_values() -> HashMap<String, String> {
    example("values")
        .lines()
        .map(|line| {
            let (label, value) = line.trim().rsplit_once(' ').expect("label and value");
            (label.trim().to_owned(), value.to_owned())
        })
        .collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().expect("an object").keys().cloned().collect()
}

#[test]
fn the_worked_example_signs_what_the_document_says() {
    let values = example_values();
    let value = |label: &str| values.get(label).unwrap_or_else(|| panic!("no {label:?} in the example")).as_str();
    let seed: [u8; 32] = hex::decode(value("private key (seed, hex)")).unwrap().try_into().unwrap();
    let key = SigningKey::from_bytes(&seed);
    assert_eq!(hex::encode(key.verifying_key().as_bytes()), value("public key (hex)"));
    assert_eq!(STANDARD.encode(key.verifying_key().as_bytes()), value("publicKey"));

    // The message as the document spells it: three parts, a line feed between them.
    let (agent_id, nonce) = (value("agentId"), value("nonce"));
    let message = format!("edge-agent/token/v1\n{agent_id}\n{nonce}");
    assert!(DOC.contains("edge-agent/token/v1\n   <agentId>\n   <nonce>"), "the documented layout changed");
    assert_eq!(hex::encode(&message), value("signed message (hex)"));
    assert_eq!(message.len(), 88, "the document says 88 bytes");
    assert_eq!(message.as_bytes(), edge_protocol::api::token_signing_message(agent_id, nonce), "what the hub verifies");
    assert_eq!(STANDARD.encode(key.sign(message.as_bytes()).to_bytes()), value("signature"));
    assert_eq!(URL_SAFE_NO_PAD.decode(nonce).map(|n| n.len()).ok(), Some(32), "a nonce is 32 bytes, URL-safe base64");

    // The request bodies carry the same values.
    let token_request = example_json("token-request");
    assert_eq!(token_request["agentId"], agent_id);
    assert_eq!(token_request["nonce"], nonce);
    assert_eq!(token_request["signature"], value("signature"));
    assert_eq!(example_json("enroll-request")["publicKey"], value("publicKey"));
    assert_eq!(example_json("challenge-request")["agentId"], agent_id);
    assert_eq!(example_json("challenge-response")["nonce"], nonce);
    // The JWT's claims, as the document decodes them.
    let token = example_json("token-response")["token"].as_str().unwrap().to_owned();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap())
        .expect("claims are JSON");
    assert_eq!(claims["agentId"], agent_id);
    assert_eq!(example_json("token-response")["expiresAt"], claims["exp"]);
}

#[tokio::test]
async fn the_documented_bodies_enroll_and_get_a_token_from_a_real_hub() {
    let hub = TestHub::start().await;
    let store = hub.store();
    let now = edge_hub::crypto::now_ms();
    let values = example_values();
    let enroll_request = example_json("enroll-request");
    let creator = example_json("enroll-response")["creatorId"].as_str().unwrap().to_owned();

    // The document's enrollment token, made known to the hub as `enroll-token create` would.
    let token = enroll_request["token"].as_str().unwrap();
    store.create_enrollment_token(&edge_hub::crypto::sha256_hex(token), &creator, now + 3_600_000, now).await.unwrap();
    let (status, enrolled) = hub.post("/v1/agent/enroll", enroll_request.clone()).await;
    assert_eq!(status, 200, "{enrolled}");
    assert_eq!(keys(&enrolled), keys(&example_json("enroll-response")));
    assert_eq!(enrolled["creatorId"], creator.as_str());

    // The example's own agent id (the hub picks one at random) and nonce, registered as the
    // hub would register them, so the document's token request can be sent as it stands.
    let agent_id = values["agentId"].clone();
    let second = "et_for-the-example-agent-id";
    store.create_enrollment_token(&edge_hub::crypto::sha256_hex(second), &creator, now + 3_600_000, now).await.unwrap();
    let agent = edge_hub::store::NewAgent {
        id: agent_id.clone(),
        public_key: values["publicKey"].clone(),
        name: Some("studio-pc".to_owned()),
        version: None,
    };
    store.enroll_agent(&edge_hub::crypto::sha256_hex(second), agent, now).await.unwrap().expect("enrolled");

    let (status, challenge) = hub.post("/v1/agent/challenge", example_json("challenge-request")).await;
    assert_eq!(status, 200, "{challenge}");
    assert_eq!(keys(&challenge), keys(&example_json("challenge-response")));
    let expires_in = challenge["expiresAt"].as_i64().unwrap() - now_secs();
    assert!((55..=61).contains(&expires_in), "the document says 60 s: {challenge}");
    assert_eq!(challenge["nonce"].as_str().map(str::len), Some(43), "{challenge}");

    store.create_nonce(&agent_id, &values["nonce"], now + 60_000, now).await.unwrap();
    let (status, issued) = hub.post("/v1/agent/token", example_json("token-request")).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(keys(&issued), keys(&example_json("token-response")));
    let jwt = issued["token"].as_str().unwrap();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1).unwrap()).unwrap()).expect("claims");
    let documented_claims: BTreeSet<&str> = ["agentId", "creatorId", "exp", "iat"].into();
    assert_eq!(claims.as_object().unwrap().keys().map(String::as_str).collect::<BTreeSet<_>>(), documented_claims);
    assert_eq!(
        (claims["agentId"].as_str(), claims["creatorId"].as_str()),
        (Some(agent_id.as_str()), Some(creator.as_str()))
    );
    assert_eq!(issued["expiresAt"], claims["exp"]);
    assert!(claims["exp"].as_i64().unwrap() <= now_secs() + 900, "at most 15 minutes");

    // The token opens the WebSocket, as the document says.
    let mut ws = hub.connect(jwt).await;
    send(&mut ws, serde_json::json!({"t":"hello","protocol":1,"v":"agent-0.1.0"})).await;
    assert_eq!(recv(&mut ws).await["agentId"], agent_id.as_str());

    // The same request again: the nonce is spent.
    let (status, again) = hub.post("/v1/agent/token", example_json("token-request")).await;
    assert_eq!((status, again["error"].as_str()), (401, Some("invalid_nonce")), "{again}");
    hub.shutdown().await;
}

#[tokio::test]
async fn the_documented_device_sign_in_bodies_work_on_a_real_hub() {
    let hub = TestHub::start_on(TestDb::sqlite(), |config| {
        config.device.interval = std::time::Duration::from_secs(1);
    })
    .await;
    let values = example_values();
    let request = example_json("device-code-request");
    assert_eq!(request["publicKey"], values["publicKey"].as_str(), "the worked example's key");
    let (status, answer) = hub.post("/v1/agent/device/code", request).await;
    assert_eq!(status, 200, "{answer}");
    let documented = example_json("device-code-response");
    assert_eq!(keys(&answer), keys(&documented));
    assert_eq!(answer["expires_in"], documented["expires_in"], "the documented default lifetime");
    let user_code = documented["user_code"].as_str().unwrap();
    assert_eq!(edge_hub::api::device::normalise_user_code(user_code).ok().as_deref(), Some(user_code));
    assert!(answer["device_code"].as_str().unwrap().starts_with("edc_"), "{answer}");

    // The documented poll, with the code this hub issued, and its documented answer.
    let mut poll = example_json("device-token-request");
    assert_eq!(poll["device_code"], documented["device_code"]);
    poll["device_code"] = answer["device_code"].clone();
    tokio::time::sleep(std::time::Duration::from_millis(1_050)).await;
    let (status, pending) = hub.post("/v1/agent/token", poll.clone()).await;
    assert_eq!((status, &pending), (400, &example_json("device-token-pending")));

    // The documented approval, with the code this hub issued, by alice's key.
    let alice = hub.creator_key(example_json("device-approve-response")["creatorId"].as_str().unwrap()).await;
    let mut approve = example_json("device-approve-request");
    approve["user_code"] = answer["user_code"].clone();
    let (status, approved) = hub.request(reqwest::Method::POST, "/v1/device/approve", &alice, Some(approve)).await;
    assert_eq!((status, &approved), (200, &example_json("device-approve-response")));
    tokio::time::sleep(std::time::Duration::from_millis(1_050)).await;
    let (status, enrolled) = hub.post("/v1/agent/token", poll).await;
    assert_eq!(status, 200, "{enrolled}");
    assert_eq!(keys(&enrolled), keys(&example_json("enroll-response")));
    hub.shutdown().await;
}
