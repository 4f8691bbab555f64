//! The tunnel end to end with real processes and a standard client: a real `edge-hub` with
//! its proxy port, a real `edge-agent run` whose person granted the tunnel, and `curl`
//! through HTTP CONNECT, the plain forward proxy and SOCKS5 to a local site the person
//! allowed. Proves: nothing exits before the grant (the proxy answers NO_AGENT); the body
//! arrives byte-exact by all three ways; an address the person did not allow is refused by
//! the agent's egress gate (403 `EGRESS_DENIED`, the site sees nothing); a creator key cannot
//! exit through another creator's agent; revoking the grant closes the tunnel.

use anyhow::{bail, Context, Result};
use edge_e2e::site::Site;
use edge_e2e::{scratch_dir, wait_until, Agent, Binaries, Hub};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `curl` with `args`; (HTTP status, refusal header, body). `--fail` is not used: a refusal is
/// an answer these tests read.
fn curl(args: &[&str]) -> Result<(u16, String, String)> {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20", "--include", "--noproxy", ""])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .output()
        .context("running curl (apt-get install --no-install-recommends curl)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // With CONNECT, curl includes the proxy's own "200 Connection Established" head first.
    let last_head = text.rfind("HTTP/1.").map(|at| &text[at..]).unwrap_or(&text);
    let status = last_head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let refusal = last_head
        .lines()
        .find_map(|l| l.strip_prefix("X-Edge-Refusal:").or_else(|| l.strip_prefix("x-edge-refusal:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    let body = last_head.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    if status == 0 && !out.status.success() {
        return Ok((0, refusal, String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok((status, refusal, body))
}

#[test]
fn curl_exits_through_the_agent_by_connect_forward_proxy_and_socks5() -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-tunnel")?;
    let site = Site::start()?;
    let unallowed = Site::start()?;
    let proxy = format!("127.0.0.1:{}", free_port()?);
    let hub = Hub::start(&bins, &dir.path().join("hub"), &[], &["--proxy-listen", &proxy])?;
    let key = hub.api_key()?;
    let creator = "creator-tunnel";
    let mut agent = Agent::new(&bins, &format!("e2e-tunnel-{}", std::process::id()), "auto", &dir.path().join("agent"));
    agent.login(&hub.url, &hub.enroll_token(creator)?)?;
    agent.allow_egress(&site.base_url);
    agent.run_with_env(&["--hb-interval-secs", "1"], &[])?;
    hub.wait_agent_online(&key, agent.agent_id(), TIMEOUT)?;
    let user = format!("agent-{}", agent.agent_id());
    let forward = format!("http://{user}:{key}@{proxy}");
    let hello = site.url("/hello");

    // Not granted: the agent opens no tunnel and nothing exits.
    let (status, refusal, body) = curl(&["-x", &forward, &hello])?;
    assert_eq!((status, refusal.as_str()), (502, "NO_AGENT"), "{body}");
    assert_eq!(site.total_hits(), 0);

    // The person grants the tunnel; the running agent opens it within seconds.
    agent.grant(&["tunnel"])?;
    wait_until(TIMEOUT, || Ok(curl(&["-x", &forward, &hello])?.0 == 200))
        .with_context(|| format!("the tunnel never carried a request; agent log:\n{}", agent.run_log()))?;
    let expected = curl(&[&hello])?.2;
    assert!(expected.contains("Hello"), "the site's page: {expected}");
    for (how, args) in
        [("forward proxy", vec!["-x", &forward, &hello]), ("CONNECT", vec!["-p", "-x", &forward, &hello])]
    {
        let (status, _, body) = curl(&args)?;
        assert_eq!((status, body.as_str()), (200, expected.as_str()), "{how}");
    }
    let socks = format!("socks5h://{user}:{key}@{proxy}");
    let (status, _, body) = curl(&["-x", &socks, &hello])?;
    assert_eq!((status, body.as_str()), (200, expected.as_str()), "SOCKS5");

    // The agent's egress gate decides: a loopback port the person did not allow is refused.
    let before = unallowed.total_hits();
    let (status, refusal, body) = curl(&["-x", &forward, &unallowed.url("/hello")])?;
    assert_eq!((status, refusal.as_str()), (403, "EGRESS_DENIED"), "{body}");
    assert!(body.contains("loopback"), "names the rule: {body}");
    let (status, _, _) = curl(&["-p", "-x", &forward, &unallowed.url("/hello")])?;
    assert_ne!(status, 200, "CONNECT to the unallowed port");
    let (status, _, err) = curl(&["-x", &socks, &unallowed.url("/hello")])?;
    assert_ne!(status, 200, "SOCKS5 to the unallowed port: {err}");
    assert_eq!(unallowed.total_hits(), before, "nothing reached the unallowed site");
    assert!(agent.run_log().contains("tunnel stream refused"), "the local log names the refusal");

    // Bad credentials and another creator's key.
    let (status, refusal, _) = curl(&["-x", &format!("http://{user}:not-a-key@{proxy}"), &hello])?;
    assert_eq!((status, refusal.as_str()), (407, "PROXY_AUTH"));
    let other_key = hub.creator_key("creator-other")?;
    let (status, refusal, _) = curl(&["-x", &format!("http://{user}:{other_key}@{proxy}"), &hello])?;
    assert_eq!((status, refusal.as_str()), (502, "NO_AGENT"), "a creator key cannot use another creator's agent");
    let own_key = hub.creator_key(creator)?;
    let (status, _, _) = curl(&["-x", &format!("http://creator-{creator}:{own_key}@{proxy}"), &hello])?;
    assert_eq!(status, 200, "a creator key exits through its own creator's agents");

    // Revoked: the tunnel closes and nothing exits any more.
    let (ok, out) = agent.oneshot(&["consent", "revoke", "tunnel"])?;
    if !ok {
        bail!("consent revoke: {out}");
    }
    wait_until(TIMEOUT, || Ok(curl(&["-x", &forward, &hello])?.1 == "NO_AGENT"))
        .context("the tunnel stayed open after the grant was revoked")?;
    Ok(())
}
