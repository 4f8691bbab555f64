//! Golden fixtures: every frame of every protocol version decodes and re-encodes to the
//! exact bytes stored under `tests/fixtures/`. A failure here means the wire format changed.

use edge_protocol::{
    decode_agent_frame, decode_hub_frame, encode, AgentFrame, ErrorCode, FrameError, HubFrame, JobStatus,
    MAX_FRAME_BYTES,
};
use std::fs;
use std::path::{Path, PathBuf};

fn fixtures(dir: &str) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir);
    let mut out: Vec<_> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let text = fs::read_to_string(&path).unwrap().trim_end().to_owned();
            (path, text)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", root.display());
    out
}

#[test]
fn agent_frames_round_trip_byte_for_byte() {
    for (path, text) in fixtures("agent") {
        let frame = decode_agent_frame(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(encode(&frame), text, "{} changed on re-encode", path.display());
    }
}

#[test]
fn hub_frames_round_trip_byte_for_byte() {
    for (path, text) in fixtures("hub") {
        let frame = decode_hub_frame(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(encode(&frame), text, "{} changed on re-encode", path.display());
    }
}

#[test]
fn every_frame_type_has_a_fixture() {
    let agent: Vec<_> = fixtures("agent").into_iter().map(|(_, t)| decode_agent_frame(&t).unwrap().kind()).collect();
    for kind in edge_protocol::frames::AGENT_FRAME_TYPES {
        assert!(agent.contains(kind), "no agent fixture for {kind}");
    }
    let hub: Vec<_> = fixtures("hub").into_iter().map(|(_, t)| decode_hub_frame(&t).unwrap().kind()).collect();
    for kind in edge_protocol::frames::HUB_FRAME_TYPES {
        assert!(hub.contains(kind), "no hub fixture for {kind}");
    }
}

#[test]
fn prototype_frames_decode_to_the_expected_values() {
    let hb = decode_agent_frame(r#"{"t":"hb","v":"agent-1.4.2","ts":1690000000}"#).unwrap();
    assert_eq!(hb, AgentFrame::Hb { v: "agent-1.4.2".into(), ts: 1_690_000_000 });

    let result =
        decode_agent_frame(r#"{"t":"job_result","id":"j","status":"error","err":{"code":"NAV_TIMEOUT"}}"#).unwrap();
    match result {
        AgentFrame::JobResult { status, err: Some(err), .. } => {
            assert_eq!(status, JobStatus::Error);
            assert_eq!(err.code, ErrorCode::NavTimeout);
            assert!(err.code.is_retryable());
        }
        other => panic!("unexpected {other:?}"),
    }

    let assign = decode_hub_frame(
        r#"{"t":"job_assign","job":{"jobId":"j1","type":"http_request","payload":{"url":"http://x"}}}"#,
    )
    .unwrap();
    match assign {
        HubFrame::JobAssign { job } => {
            assert_eq!(job.job_id, "j1");
            assert_eq!(job.job_type, "http_request");
            assert_eq!(job.payload["url"], "http://x");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unknown_fields_are_tolerated_for_forward_compatibility() {
    let frame = decode_agent_frame(r#"{"t":"job_ack","id":"j","addedInV9":true}"#).unwrap();
    assert_eq!(frame, AgentFrame::JobAck { id: "j".into() });
}

#[test]
fn malformed_frames_are_classified_not_panicked() {
    let expect = [
        // (fixture, code when an agent sent it, code when a hub sent it)
        ("unknown_type.json", "UNKNOWN_TYPE", "UNKNOWN_TYPE"),
        ("missing_field.json", "BAD_FRAME", "UNKNOWN_TYPE"),
        ("missing_t.json", "BAD_FRAME", "BAD_FRAME"),
        ("bad_enum.json", "BAD_FRAME", "UNKNOWN_TYPE"),
        ("not_json.json", "BAD_FRAME", "BAD_FRAME"),
        ("array.json", "BAD_FRAME", "BAD_FRAME"),
        ("t_not_string.json", "BAD_FRAME", "BAD_FRAME"),
    ];
    let all = fixtures("malformed");
    assert_eq!(all.len(), expect.len(), "every malformed fixture needs an expectation");
    for (name, agent_code, hub_code) in expect {
        let (_, text) = all.iter().find(|(p, _)| p.ends_with(name)).unwrap();
        let agent_err = decode_agent_frame(text).expect_err(name);
        let hub_err = decode_hub_frame(text).expect_err(name);
        assert_eq!(agent_err.code(), agent_code, "{name}: {agent_err}");
        assert_eq!(hub_err.code(), hub_code, "{name}: {hub_err}");
        assert!(!agent_err.to_string().is_empty());
    }
    // The message names what is missing so a peer's developer can fix it.
    let err = decode_agent_frame(r#"{"t":"job_ack"}"#).unwrap_err();
    assert!(err.to_string().contains("`id`"), "{err}");
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    let big = format!(r#"{{"t":"hb","v":"{}","ts":1}}"#, "x".repeat(MAX_FRAME_BYTES));
    let err = decode_agent_frame(&big).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }));
    assert_eq!(err.code(), "FRAME_TOO_LARGE");
    // Exactly at the limit is still parsed.
    let pad = MAX_FRAME_BYTES - r#"{"t":"hb","v":"","ts":1}"#.len();
    let edge = format!(r#"{{"t":"hb","v":"{}","ts":1}}"#, "x".repeat(pad));
    assert_eq!(edge.len(), MAX_FRAME_BYTES);
    assert!(decode_agent_frame(&edge).is_ok());
}

#[test]
fn a_hub_frame_is_not_accepted_from_an_agent() {
    let err = decode_agent_frame(r#"{"t":"job_assign","job":{"jobId":"j","type":"x"}}"#).unwrap_err();
    assert_eq!(err.code(), "UNKNOWN_TYPE");
}

#[test]
fn a_capability_the_person_did_not_grant_is_a_fatal_job_error() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agent/job_result_capability_not_granted.v2.json"),
    )
    .unwrap();
    match decode_agent_frame(&text).unwrap() {
        AgentFrame::JobResult { status, err: Some(err), .. } => {
            assert_eq!(status, JobStatus::Error);
            assert_eq!(err.code, ErrorCode::CapabilityNotGranted);
            assert!(!err.code.is_retryable(), "retrying cannot help until the person grants it");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_send_whose_outcome_is_unknown_is_a_fatal_job_error_naming_its_recipient() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agent/job_result_send_uncertain.v2.json"),
    )
    .unwrap();
    match decode_agent_frame(&text).unwrap() {
        AgentFrame::JobResult { status, err: Some(err), data: Some(data), .. } => {
            assert_eq!(status, JobStatus::Error);
            assert_eq!(err.code, ErrorCode::SendUncertain);
            assert!(!err.code.is_retryable(), "a retry could message the person twice");
            assert_eq!(data["uncertainRecipients"], serde_json::json!(["@ann"]));
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A payload nested `levels` deep: `{"a":{"a":…{}…}}`.
fn nested(levels: usize) -> String {
    format!("{}{{}}{}", r#"{"a":"#.repeat(levels - 1), "}".repeat(levels - 1))
}

#[test]
fn a_job_assign_too_deep_to_parse_still_yields_its_id() {
    // Issue 18: the hub's own parser took payloads up to 127 levels deep, two levels more
    // than fit in a frame the agent can parse; the agent then could not even say which job
    // it could not read.
    for levels in [127, 5_000] {
        let text = format!(
            r#"{{"t":"job_assign","job":{{"jobId":"job-deep","type":"custom","payload":{}}}}}"#,
            nested(levels)
        );
        assert!(decode_hub_frame(&text).is_err(), "{levels} levels must not decode");
        assert_eq!(edge_protocol::job_assign_id(&text).as_deref(), Some("job-deep"), "{levels} levels");
    }
    // The id is read wherever it sits and whatever else is wrong with the job.
    let text = format!(r#"{{"job":{{"payload":{},"type":7,"jobId":"job-late"}},"t":"job_assign"}}"#, nested(300));
    assert_eq!(edge_protocol::job_assign_id(&text).as_deref(), Some("job-late"));
    // Nothing to read: no id, or not a job_assign.
    assert_eq!(edge_protocol::job_assign_id(r#"{"t":"job_assign","job":{"type":"x"}}"#), None);
    assert_eq!(edge_protocol::job_assign_id(r#"{"t":"job_cancel","id":"job-1"}"#), None);
    assert_eq!(edge_protocol::job_assign_id("not json"), None);
}

#[test]
fn payload_limits_are_the_ones_a_job_assign_can_carry() {
    use edge_protocol::{check_payload, PayloadError, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH};
    let at_limit: serde_json::Value = serde_json::from_str(&nested(MAX_PAYLOAD_DEPTH)).unwrap();
    assert_eq!(check_payload(&at_limit), Ok(()));
    // A payload at the limit still decodes inside its frame.
    let frame = format!(
        r#"{{"t":"job_assign","job":{{"jobId":"j","type":"custom","payload":{}}}}}"#,
        nested(MAX_PAYLOAD_DEPTH)
    );
    assert!(decode_hub_frame(&frame).is_ok());
    let over: serde_json::Value = serde_json::from_str(&nested(MAX_PAYLOAD_DEPTH + 1)).unwrap();
    assert_eq!(check_payload(&over), Err(PayloadError::TooDeep { limit: MAX_PAYLOAD_DEPTH }));
    let deep_array: serde_json::Value =
        serde_json::from_str(&format!("{{\"a\":{}{}}}", "[".repeat(MAX_PAYLOAD_DEPTH), "]".repeat(MAX_PAYLOAD_DEPTH)))
            .unwrap();
    assert!(matches!(check_payload(&deep_array), Err(PayloadError::TooDeep { .. })));
    let big = serde_json::json!({"blob": "x".repeat(MAX_PAYLOAD_BYTES)});
    assert!(matches!(check_payload(&big), Err(PayloadError::TooLarge { .. })));
    assert!(check_payload(&big).unwrap_err().to_string().contains("at most"));
}

/// HTTP bodies beside the frames: the update report keeps its exact bytes.
#[test]
fn update_failed_bodies_round_trip_byte_for_byte() {
    use edge_protocol::api::{UpdateFailedRequest, UpdateFailedResponse};
    for (path, text) in fixtures("http") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let again = if name.starts_with("update_failed_response") {
            serde_json::to_string(&serde_json::from_str::<UpdateFailedResponse>(&text).unwrap()).unwrap()
        } else if name.starts_with("update_failed") {
            let request: UpdateFailedRequest = serde_json::from_str(&text).unwrap();
            assert_eq!(request.previous_version, "0.2.0");
            serde_json::to_string(&request).unwrap()
        } else {
            panic!("{name}: no decoder for this fixture");
        };
        assert_eq!(again, text, "{name} changed on re-encode");
    }
}
