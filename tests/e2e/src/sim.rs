//! A scripted agent for failure tests: a plain WebSocket client that speaks the protocol
//! frame by frame, so a test can ack and then vanish, answer late, or hold a job exactly as
//! long as it wants. It enrolls through the real HTTP API and signs its session token with
//! the hub's `EDGE_HUB_JWT_SECRET` (set by the test), so no device key is needed.
//!
//! It must never pretend to be the real agent in a test about the agent: those use [`crate::Agent`].

use crate::mint_jwt;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

type Ws = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

/// An enrolled (not yet connected) simulated agent.
#[derive(Debug, Clone)]
pub struct SimIdentity {
    pub agent_id: String,
    pub creator_id: String,
}

impl SimIdentity {
    /// Enrolls with `enrollment_token` (from `edge-hub enroll-token create`). The public key
    /// is RFC 8032's first test vector: enrollment only checks that it is a valid point, and
    /// this agent never signs anything (its token is minted with the hub's secret).
    pub fn enroll(hub_url: &str, enrollment_token: &str) -> Result<SimIdentity> {
        const RFC8032_TEST1_PUBLIC_KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let public_key = RFC8032_TEST1_PUBLIC_KEY;
        let answer: Value = ureq::post(&format!("{hub_url}/v1/agent/enroll"))
            .send_json(
                json!({"token": enrollment_token, "publicKey": public_key, "name": "sim", "version": "agent-sim"}),
            )
            .context("enrolling a simulated agent")?
            .into_json()?;
        Ok(SimIdentity {
            agent_id: answer["agentId"].as_str().context("agentId")?.to_owned(),
            creator_id: answer["creatorId"].as_str().context("creatorId")?.to_owned(),
        })
    }

    /// A session token signed with the hub's secret, valid for 10 minutes.
    pub fn token(&self, jwt_secret: &str) -> String {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0) + 600;
        mint_jwt(jwt_secret.as_bytes(), &self.agent_id, &self.creator_id, exp)
    }
}

/// A connected simulated agent.
pub struct SimAgent {
    pub id: SimIdentity,
    socket: Ws,
    last_hb: Instant,
}

impl SimAgent {
    /// Connects to `hub_addr` (`host:port`), says `hello` with `slots`, waits for `hello_ack`.
    pub fn connect(hub_addr: &str, id: &SimIdentity, jwt_secret: &str, slots: u32) -> Result<SimAgent> {
        let url = format!("ws://{hub_addr}/v1/agent/ws?token={}", id.token(jwt_secret));
        let (socket, _) = tungstenite::connect(url.as_str()).context("WebSocket handshake")?;
        let mut agent = SimAgent { id: id.clone(), socket, last_hb: Instant::now() };
        agent.set_read_timeout(Duration::from_millis(100))?;
        agent.send(&json!({"t":"hello","protocol":1,"v":"agent-sim","capabilities":["http_request"],"slots":slots}))?;
        match agent.recv(Duration::from_secs(10))? {
            Some(frame) if frame["t"] == "hello_ack" => Ok(agent),
            other => bail!("expected hello_ack, got {other:?}"),
        }
    }

    fn set_read_timeout(&mut self, timeout: Duration) -> Result<()> {
        if let MaybeTlsStream::Plain(tcp) = self.socket.get_ref() {
            tcp.set_read_timeout(Some(timeout))?;
        }
        Ok(())
    }

    pub fn send(&mut self, frame: &Value) -> Result<()> {
        self.socket.send(Message::text(frame.to_string())).context("sending a frame")
    }

    /// The next frame within `timeout` (`None` if none came), sending a heartbeat every
    /// second meanwhile so the hub keeps the session and extends our leases.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.last_hb.elapsed() >= Duration::from_secs(1) {
                self.last_hb = Instant::now();
                let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                self.send(&json!({"t":"hb","v":"agent-sim","ts":ts}))?;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.set_read_timeout(left.clamp(Duration::from_millis(1), Duration::from_millis(100)))?;
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    let frame: Value = serde_json::from_str(text.as_str())?;
                    if frame["t"] == "hb_ack" {
                        continue;
                    }
                    return Ok(Some(frame));
                }
                Ok(Message::Close(frame)) => bail!("the hub closed the session: {frame:?}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading from the hub"),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Waits for the next `job_assign` and returns its `job` object.
    pub fn next_job(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(frame) = self.recv(deadline.saturating_duration_since(Instant::now()))? {
                if frame["t"] == "job_assign" {
                    return Ok(frame["job"].clone());
                }
            }
        }
        bail!("no job_assign within {timeout:?}")
    }

    pub fn ack(&mut self, job_id: &str) -> Result<()> {
        self.send(&json!({"t":"job_ack","id":job_id}))
    }

    pub fn succeed(&mut self, job_id: &str, data: Value) -> Result<()> {
        self.send(&json!({"t":"job_result","id":job_id,"status":"ok","data":data}))
    }

    pub fn fail(&mut self, job_id: &str, code: &str) -> Result<()> {
        self.send(&json!({"t":"job_result","id":job_id,"status":"error","err":{"code":code,"message":"simulated"}}))
    }

    /// Drops the TCP connection without a close frame, like a cable pulled mid-job.
    pub fn cut(self) {
        if let MaybeTlsStream::Plain(tcp) = self.socket.get_ref() {
            let _ = tcp.shutdown(std::net::Shutdown::Both);
        }
    }
}
