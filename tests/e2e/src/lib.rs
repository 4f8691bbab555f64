//! Process harness shared by the end-to-end tests and `cargo xtask demo`: it starts the real
//! `edge-hub` and `edge-agent` binaries on loopback, drives them through their CLIs and the
//! hub's HTTP API, and kills them when dropped.
//!
//! It owns nothing but child processes and temp files; it must never reach beyond 127.0.0.1
//! and never leave a process running after its owner is dropped.

pub mod keyring;
pub mod pg;
pub mod procfs;
pub mod s3;
pub mod sim;
pub mod site;
pub mod webdriver;
pub mod xvfb;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Paths of the binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub hub: PathBuf,
    pub agent: PathBuf,
}

impl Binaries {
    /// `EDGE_HUB_BIN` / `EDGE_AGENT_BIN` when set, else the cargo profile dir this test
    /// binary was built into (`target/<profile>/deps/..`).
    pub fn locate() -> Result<Binaries> {
        let profile_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .map(|dir| if dir.ends_with("deps") { dir.parent().unwrap_or(&dir).to_path_buf() } else { dir })
            .ok_or_else(|| anyhow!("cannot find the directory of the running executable"))?;
        let pick = |var: &str, name: &str| -> Result<PathBuf> {
            let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| profile_dir.join(name));
            if !path.is_file() {
                bail!("{} not found: build it first with `cargo build -p {name}` or set {var}", path.display());
            }
            Ok(path)
        };
        Ok(Binaries { hub: pick("EDGE_HUB_BIN", "edge-hub")?, agent: pick("EDGE_AGENT_BIN", "edge-agent")? })
    }
}

/// Sends SIGTERM (a clean shutdown request) to a child.
pub fn terminate(child: &mut Child) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

/// Waits up to `timeout` for the child to exit, then kills it. Returns whether it exited by itself.
pub fn stop(child: &mut Child, timeout: Duration) -> bool {
    terminate(child);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Copies a child's output stream into a log file, and hands lines that match `watch`
/// to a channel, so a test can wait for "listening on …" without blocking the pipe.
fn tee(stream: impl std::io::Read + Send + 'static, log: PathBuf, watch: Option<(&'static str, mpsc::Sender<String>)>) {
    thread::spawn(move || {
        let mut file = fs::OpenOptions::new().create(true).append(true).open(&log).ok();
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Some(file) = file.as_mut() {
                let _ = writeln!(file, "{line}");
            }
            if let Some((needle, tx)) = &watch {
                if line.contains(needle) {
                    let _ = tx.send(line.clone());
                }
            }
        }
    });
}

/// What [`Hub::publish_shell_bundle`] did.
#[derive(Debug, Clone)]
pub struct ShellBundle {
    /// The repository's offline root keys.
    pub root_dir: PathBuf,
    /// What `edge-agent status` must show once the agent logged in.
    pub root_fingerprint: String,
    /// `edge-hub bundle publish`'s JSON line (`target`, `changed`, `entrypoint`, …).
    pub published: Value,
}

/// A running `edge-hub serve` on a SQLite file.
pub struct Hub {
    bins: Binaries,
    dir: PathBuf,
    pub database_url: String,
    pub url: String,
    env: Vec<(String, String)>,
    extra_args: Vec<String>,
    child: Option<Child>,
    starts: u32,
}

impl Hub {
    /// Starts a hub whose database and logs live in `dir`.
    pub fn start(bins: &Binaries, dir: &Path, env: &[(&str, &str)], extra_args: &[&str]) -> Result<Hub> {
        let database_url = format!("sqlite://{}", dir.join("hub.db").display());
        Hub::start_with_database(bins, dir, &database_url, env, extra_args)
    }

    /// Starts a hub on `database_url` (SQLite or PostgreSQL), with its logs in `dir`.
    /// Several hubs may share one PostgreSQL database, each with its own `dir`.
    pub fn start_with_database(
        bins: &Binaries,
        dir: &Path,
        database_url: &str,
        env: &[(&str, &str)],
        extra_args: &[&str],
    ) -> Result<Hub> {
        fs::create_dir_all(dir)?;
        let mut hub = Hub {
            bins: bins.clone(),
            dir: dir.to_path_buf(),
            database_url: database_url.to_owned(),
            url: String::new(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            starts: 0,
        };
        hub.spawn("127.0.0.1:0")?;
        Ok(hub)
    }

    fn spawn(&mut self, listen: &str) -> Result<()> {
        self.starts += 1;
        let mut child = Command::new(&self.bins.hub)
            .args(["--database-url", &self.database_url, "serve", "--listen", listen])
            .args(&self.extra_args)
            // Every agent of these tests logs in from 127.0.0.1, as a fleet behind one NAT
            // does: the operator of such a fleet raises the per-address budget of
            // enroll/challenge/token the same way. A test's own env can set it lower; the
            // limiter itself is tested in crates/hub/tests/hardening.rs.
            .env("EDGE_HUB_AUTH_RATE_PER_MINUTE", "6000")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.bins.hub.display()))?;
        let (tx, rx) = mpsc::channel();
        let log = self.dir.join(format!("hub-{}.log", self.starts));
        tee(child.stdout.take().expect("piped"), log.clone(), Some(("listening on", tx)));
        tee(child.stderr.take().expect("piped"), log.clone(), None);
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("hub did not print its listening line within 30 s; its log:\n{}", read_log(&log));
            }
        };
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .ok_or_else(|| anyhow!("no URL in hub line {line:?}"))?
            .trim_end_matches('/')
            .to_owned();
        self.url = url;
        self.child = Some(child);
        if self.url.starts_with("https://") {
            // A hub serving TLS with a test CA: this harness's HTTP client does not trust it,
            // so readiness is its port accepting connections.
            let addr = self.addr().to_owned();
            wait_until(Duration::from_secs(10), || Ok(std::net::TcpStream::connect(&addr).is_ok()))
                .context("the TLS hub never accepted a connection")?;
        } else {
            wait_until(Duration::from_secs(10), || Ok(ureq::get(&format!("{}/health", self.url)).call().is_ok()))
                .context("hub /health never answered")?;
        }
        Ok(())
    }

    /// The `host:port` the hub listens on.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("https://").trim_start_matches("http://")
    }

    /// `kill -9`: no chance to clean up, like a crash or power loss.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the hub again on the same database and port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let addr = self.addr().to_owned();
        self.spawn(&addr)
    }

    /// [`Hub::restart`] with other `serve` options (for options that name what exists only
    /// after the first start, such as an agent's id).
    pub fn restart_with(&mut self, extra_args: &[&str]) -> Result<()> {
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
        self.restart()
    }

    /// Clean shutdown (SIGTERM); returns whether it exited within 10 s.
    pub fn shutdown(&mut self) -> bool {
        match self.child.take() {
            Some(mut child) => stop(&mut child, Duration::from_secs(10)),
            None => true,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("hub-{}.log", self.starts))
    }

    /// `edge-hub ARGS` on this hub's database (and its default bundle directory); its one line.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bins.hub)
            .args(["--database-url", &self.database_url])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .with_context(|| format!("running edge-hub {args:?}"))?;
        if !out.status.success() {
            bail!("edge-hub {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8(out.stdout)?.trim().to_owned();
        if stdout.is_empty() || stdout.contains('\n') {
            bail!("edge-hub {args:?} should print exactly one line, printed {stdout:?}");
        }
        Ok(stdout)
    }

    /// `edge-hub bundle publish` of the shell-runtime bundle in `source` (keys must exist);
    /// returns what the CLI printed (`file`, `length`, …).
    pub fn publish_shell_dir(&self, tenant: &str, name: &str, version: &str, source: &Path) -> Result<Value> {
        let source = source.to_str().context("the bundle source path is not UTF-8")?;
        self.bundle_cli(&[
            "publish",
            "--tenant",
            tenant,
            "--name",
            name,
            "--version",
            version,
            "--runtime",
            "shell",
            source,
        ])
    }

    /// `edge-hub bundle …` (keys, publish, list) on this hub's bundle directory; returns the
    /// JSON line it prints.
    pub fn bundle_cli(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["bundle"];
        full.extend_from_slice(args);
        Ok(serde_json::from_str(&self.cli(&full)?)?)
    }

    /// `edge-hub release …` (publish, pause, resume, rollout, list); returns the JSON line
    /// it prints.
    pub fn release_cli(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["release"];
        full.extend_from_slice(args);
        Ok(serde_json::from_str(&self.cli(&full)?)?)
    }

    /// Publishes the agent binary `file` as `version` for this machine's Linux architecture
    /// on the default channel.
    pub fn publish_release(&self, file: &Path, version: &str) -> Result<Value> {
        let file = file.to_str().context("non-UTF-8 path")?;
        self.release_cli(&[
            "publish",
            file,
            "--version",
            version,
            "--platform",
            "linux",
            "--arch",
            std::env::consts::ARCH,
        ])
    }

    /// Publishes a `shell` bundle whose `main.sh` is `script`, creating the bundle
    /// repository's root keys first if this hub has none yet (in `<hub dir>/root-keys`,
    /// where an operator would keep them offline). Agents must log in after the first call
    /// to receive the root.
    pub fn publish_shell_bundle(&self, tenant: &str, name: &str, version: &str, script: &str) -> Result<ShellBundle> {
        let root_dir = self.dir.join("root-keys");
        let root_dir_arg = root_dir.to_str().context("the hub dir is not UTF-8")?;
        let root = if root_dir.exists() {
            self.bundle_cli(&["root", "fingerprint"])?
        } else {
            self.bundle_cli(&["keys", "init", "--root-dir", root_dir_arg])?
        };
        let root_fingerprint =
            root["rootFingerprint"].as_str().ok_or_else(|| anyhow!("no rootFingerprint in {root}"))?.to_owned();
        let source = self.dir.join("bundle-sources").join(format!("{tenant}-{name}-{version}"));
        fs::create_dir_all(&source)?;
        fs::write(source.join("main.sh"), script)?;
        let published = self.publish_shell_dir(tenant, name, version, &source)?;
        Ok(ShellBundle { root_dir, root_fingerprint, published })
    }

    pub fn enroll_token(&self, creator: &str) -> Result<String> {
        self.cli(&["enroll-token", "create", "--creator", creator])
    }

    pub fn api_key(&self) -> Result<String> {
        self.cli(&["api-key", "create", "--name", "e2e"])
    }

    /// An API key scoped to one creator.
    pub fn creator_key(&self, creator: &str) -> Result<String> {
        self.cli(&["api-key", "create", "--name", "e2e-creator", "--creator", creator])
    }

    pub fn submit_job(&self, key: &str, body: &Value) -> Result<Value> {
        let resp = ureq::post(&format!("{}/v1/jobs", self.url))
            .set("Authorization", &format!("Bearer {key}"))
            .send_json(body.clone());
        json_or_error(resp)
    }

    pub fn job(&self, key: &str, id: &str) -> Result<Value> {
        json_or_error(
            ureq::get(&format!("{}/v1/jobs/{id}", self.url)).set("Authorization", &format!("Bearer {key}")).call(),
        )
    }

    /// `POST /v1/jobs` with an `Idempotency-Key`, so a retry after a lost answer cannot
    /// create a second job.
    pub fn submit_job_idempotent(&self, key: &str, idempotency_key: &str, body: &Value) -> Result<Value> {
        let resp = ureq::post(&format!("{}/v1/jobs", self.url))
            .set("Authorization", &format!("Bearer {key}"))
            .set("Idempotency-Key", idempotency_key)
            .timeout(Duration::from_secs(10))
            .send_json(body.clone());
        json_or_error(resp)
    }

    /// `GET` of any API path with the operator key, as JSON.
    pub fn get(&self, key: &str, path_and_query: &str) -> Result<Value> {
        json_or_error(
            ureq::get(&format!("{}{path_and_query}", self.url))
                .set("Authorization", &format!("Bearer {key}"))
                .timeout(Duration::from_secs(10))
                .call(),
        )
    }

    /// One value of the `/metrics` page (a sample without labels), scraped with `key`.
    pub fn metric(&self, key: &str, name: &str) -> Result<f64> {
        let text = ureq::get(&format!("{}/metrics", self.url))
            .set("Authorization", &format!("Bearer {key}"))
            .timeout(Duration::from_secs(10))
            .call()
            .context("GET /metrics")?
            .into_string()?;
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .with_context(|| format!("{name} is not on the metrics page:\n{text}"))?;
        let value = line.split_whitespace().nth(1).unwrap_or_default();
        value.parse().with_context(|| format!("{name} has a value that is not a number: {line}"))
    }

    /// The process id of the running hub, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn agents(&self, key: &str) -> Result<Value> {
        json_or_error(
            ureq::get(&format!("{}/v1/agents", self.url)).set("Authorization", &format!("Bearer {key}")).call(),
        )
    }

    /// Submits `body` and waits until the job is final; returns the final job.
    pub fn run_job(&self, key: &str, body: &Value, timeout: Duration) -> Result<Value> {
        let job = self.submit_job(key, body)?;
        let id = job["id"].as_str().ok_or_else(|| anyhow!("no job id in {job}"))?;
        self.wait_job_done(key, id, timeout)
    }

    /// Polls until the job is final (`succeeded`, `failed`, `dead` or `cancelled`),
    /// returning it as the hub recorded it.
    pub fn wait_job_done(&self, key: &str, id: &str, timeout: Duration) -> Result<Value> {
        let mut last = Value::Null;
        wait_until(timeout, || {
            last = self.job(key, id)?;
            Ok(matches!(last["status"].as_str(), Some("succeeded" | "failed" | "dead" | "cancelled")))
        })
        .with_context(|| format!("job {id} not finished; last seen: {last}"))?;
        Ok(last)
    }

    pub fn wait_agent_online(&self, key: &str, agent_id: &str, timeout: Duration) -> Result<()> {
        wait_until(timeout, || {
            let agents = self.agents(key)?;
            Ok(agents["agents"]
                .as_array()
                .map(|all| all.iter().any(|a| a["agentId"] == agent_id && a["online"] == true))
                .unwrap_or(false))
        })
        .with_context(|| format!("agent {agent_id} never came online"))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

fn json_or_error(resp: Result<ureq::Response, ureq::Error>) -> Result<Value> {
    match resp {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(code, r)) => bail!("HTTP {code}: {}", r.into_string().unwrap_or_default()),
        Err(e) => Err(e.into()),
    }
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
}

/// Polls `check` every 50 ms until it is true or `timeout` passes; errors from `check`
/// count as "not yet".
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?}")),
                None => anyhow!("timed out after {timeout:?}"),
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The headless agent CLI bound to one profile, keychain backend and data dir.
pub struct Agent {
    bin: PathBuf,
    pub profile: String,
    pub keychain: String,
    pub data_dir: PathBuf,
    pub agent_id: Option<String>,
    /// Every process of this agent starts with a session keyring of its own
    /// ([`keyring::in_new_session_keyring`]) instead of the test's.
    pub own_session_keyring: bool,
    /// Destinations its person allows beyond the public internet: each run gets one
    /// `--allow-egress` per entry (see [`Agent::allow_egress`]).
    pub allow_egress: Vec<String>,
    /// Environment every command of this agent gets (e.g. `EDGE_AGENT_HUB_CA`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    runs: u32,
}

impl Agent {
    pub fn new(bins: &Binaries, profile: &str, keychain: &str, data_dir: &Path) -> Agent {
        Agent {
            bin: bins.agent.clone(),
            profile: profile.to_owned(),
            keychain: keychain.to_owned(),
            data_dir: data_dir.to_path_buf(),
            agent_id: None,
            own_session_keyring: false,
            allow_egress: Vec::new(),
            env: Vec::new(),
            child: None,
            runs: 0,
        }
    }

    /// Grants a local site the way its person would (`edge-agent run --allow-egress
    /// 127.0.0.1:PORT`): `url` is the site's base URL or `ADDRESS:PORT`; only that exact
    /// address and port are allowed, the egress gate stays on for everything else.
    pub fn allow_egress(&mut self, url: &str) -> &mut Agent {
        let authority = url.split("://").last().unwrap_or(url).split('/').next().unwrap_or_default();
        self.allow_egress.push(authority.to_owned());
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--profile", &self.profile, "--keychain", &self.keychain])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if self.own_session_keyring {
            keyring::in_new_session_keyring(&mut cmd);
        }
        cmd
    }

    /// Runs `edge-agent login` and returns its stdout; remembers the agent id it printed.
    pub fn login(&mut self, hub_url: &str, token: &str) -> Result<String> {
        let out = self.command().args(["login", "--hub", hub_url, "--token", token]).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("edge-agent login failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
        }
        self.agent_id = stdout
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .find(|w| w.starts_with("agt_"))
            .map(str::to_owned);
        if self.agent_id.is_none() {
            bail!("edge-agent login printed no agent id (agt_…): {stdout}");
        }
        Ok(stdout)
    }

    /// Starts `edge-agent login --device HUB_URL` and returns it once it has printed the
    /// code to approve and started waiting (or exited without).
    pub fn start_device_login(&self, hub_url: &str) -> Result<DeviceLoginRun> {
        let mut child = self
            .command()
            .args(["login", "--device", hub_url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting edge-agent login --device")?;
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut run = DeviceLoginRun { child, lines, output: Vec::new(), user_code: None, complete_url: None };
        let deadline = Instant::now() + Duration::from_secs(30);
        // The last line before it waits says so.
        while !run.output.iter().any(|l| l.contains("Waiting for approval")) && Instant::now() < deadline {
            match run.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => run.take(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if run.child.try_wait()?.is_some() {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(run)
    }

    /// Grants capabilities with `edge-agent consent grant` (as the person does after logging
    /// in; a fresh install runs nothing). Before `run`: `hello` announces what was granted
    /// when the agent connects.
    pub fn grant(&self, capabilities: &[&str]) -> Result<()> {
        for capability in capabilities {
            let (ok, out) = self.oneshot(&["consent", "grant", capability])?;
            if !ok {
                bail!("edge-agent consent grant {capability} failed: {out}");
            }
        }
        Ok(())
    }

    pub fn agent_id(&self) -> &str {
        self.agent_id.as_deref().unwrap_or("")
    }

    /// Runs a one-shot subcommand (`status`, `logout`) and returns (success, stdout+stderr).
    pub fn oneshot(&self, args: &[&str]) -> Result<(bool, String)> {
        self.oneshot_with_env(args, &[])
    }

    /// `edge-agent browser login --headless` on `adapter` (written to a file beside the data
    /// dir), the way a test logs in once: a site's auto-login page stands in for the person.
    /// An error with the command's output if it fails.
    pub fn browser_login_headless(&self, adapter: &impl serde::Serialize) -> Result<String> {
        let file = self.data_dir.with_extension("login-adapter.json");
        fs::write(&file, serde_json::to_vec(adapter)?)?;
        let site = file.to_str().context("the adapter path is not UTF-8")?;
        let (ok, out) = self.oneshot(&["browser", "login", "--site", site, "--headless", "--timeout-secs", "30"])?;
        if !ok {
            bail!("edge-agent browser login failed: {out}");
        }
        Ok(out)
    }

    /// [`Agent::oneshot`] with extra environment variables for this process only (`DISPLAY`
    /// for a browser login with a window).
    pub fn oneshot_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<(bool, String)> {
        let out = self.command().args(args).envs(env.iter().copied()).output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    /// Puts a site adapter into the person's adapters folder (`<data dir>/adapters/NAME.yaml`),
    /// as a person copies a file there; jobs then name it `{"local": NAME}`.
    pub fn install_adapter(&self, name: &str, yaml: &str) -> Result<PathBuf> {
        let dir = self.data_dir.join("adapters");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml)?;
        Ok(path)
    }

    /// Starts `edge-agent run` in the background.
    pub fn run(&mut self, extra_args: &[&str]) -> Result<()> {
        self.spawn_run(extra_args, &[], None)
    }

    /// Starts `edge-agent run` with extra environment variables (test hooks such as
    /// `EDGE_AGENT_TEST_EXIT_AFTER_JOURNAL=1`) for this process only.
    pub fn run_with_env(&mut self, extra_args: &[&str], env: &[(&str, &str)]) -> Result<()> {
        self.spawn_run(extra_args, env, None)
    }

    /// Waits up to `timeout` for the running agent to exit by itself; returns its exit code
    /// (`None`: killed by a signal). Errors if it is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let child = self.child.as_mut().ok_or_else(|| anyhow!("agent not running"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                bail!("agent still running after {timeout:?}; log:\n{}", self.run_log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `edge-agent run` and returns how long it took from spawning the process until
    /// it printed a line containing `needle`.
    pub fn run_until_line(&mut self, extra_args: &[&str], needle: &'static str, timeout: Duration) -> Result<Duration> {
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        self.spawn_run(extra_args, &[], Some((needle, tx)))?;
        rx.recv_timeout(timeout)
            .map(|_| started.elapsed())
            .map_err(|_| anyhow!("agent never printed {needle:?} within {timeout:?}; log:\n{}", self.run_log()))
    }

    fn spawn_run(
        &mut self,
        extra_args: &[&str],
        env: &[(&str, &str)],
        watch: Option<(&'static str, mpsc::Sender<String>)>,
    ) -> Result<()> {
        if self.child.is_some() {
            bail!("agent already running");
        }
        self.runs += 1;
        let log = self.data_dir.join(format!("run-{}.log", self.runs));
        fs::create_dir_all(&self.data_dir)?;
        let mut child = self
            .command()
            .arg("run")
            .args(extra_args)
            .args(self.allow_egress.iter().flat_map(|a| ["--allow-egress", a.as_str()]))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting edge-agent run")?;
        let (out_watch, err_watch) = match watch {
            Some((needle, tx)) => (Some((needle, tx.clone())), Some((needle, tx))),
            None => (None, None),
        };
        tee(child.stdout.take().expect("piped"), log.clone(), out_watch);
        tee(child.stderr.take().expect("piped"), log, err_watch);
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn run_log(&self) -> String {
        read_log(&self.data_dir.join(format!("run-{}.log", self.runs)))
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; returns whether it exited cleanly within 10 s.
    pub fn shutdown(&mut self) -> bool {
        match self.child.take() {
            Some(mut child) => stop(&mut child, Duration::from_secs(10)),
            None => true,
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if self.agent_id.is_some() {
            // Leave no credentials behind in the test machine's keychain.
            let _ = self.oneshot(&["logout"]);
        }
    }
}

/// A JSON body for an `http_request` job.
pub fn http_job(creator: &str, url: &str) -> Value {
    json!({ "type": "http_request", "creatorId": creator, "payload": { "url": url, "method": "GET", "timeoutMs": 10_000 } })
}

/// Mints an HS256 JWT with the hub's claim names. Tests use it to forge and expire tokens
/// with a secret they choose.
pub fn mint_jwt(secret: &[u8], agent_id: &str, creator_id: &str, exp: i64) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    // Issued now (or a minute before an expiry already past), as the hub issues them: the
    // hub refuses an `iat` in the future and a lifetime above its TTL.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let iat = now.min(exp - 60);
    let claims =
        B64.encode(json!({ "agentId": agent_id, "creatorId": creator_id, "iat": iat, "exp": exp }).to_string());
    let signing_input = format!("{header}.{claims}");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// Opens the agent WebSocket with `token` and returns the close code and reason the hub
/// ends the session with (or an error if it does not close within 10 s).
pub fn ws_close_for_token(hub_addr: &str, token: &str) -> Result<(u16, String)> {
    use tungstenite::Message;
    let mut socket = open_ws(hub_addr, token)?;
    // The hub may close before it reads our hello; a failed send is not the point here.
    let _ = socket.send(Message::text(E2E_HELLO));
    loop {
        match socket.read() {
            Ok(Message::Close(Some(frame))) => return Ok((u16::from(frame.code), frame.reason.to_string())),
            Ok(Message::Close(None)) => bail!("hub closed without a close code"),
            Ok(_) => continue,
            Err(e) => bail!("no close frame from the hub: {e}"),
        }
    }
}

/// Opens the agent WebSocket with `token`, says `hello`, and returns the first frame the
/// hub answers with as JSON.
pub fn ws_first_frame(hub_addr: &str, token: &str) -> Result<Value> {
    let mut socket = open_ws(hub_addr, token)?;
    socket.send(tungstenite::Message::text(E2E_HELLO))?;
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Text(text)) => return Ok(serde_json::from_str(text.as_str())?),
            Ok(tungstenite::Message::Close(frame)) => bail!("hub closed the session: {frame:?}"),
            Ok(_) => continue,
            Err(e) => bail!("no frame from the hub: {e}"),
        }
    }
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

fn open_ws(hub_addr: &str, token: &str) -> Result<Ws> {
    let url = format!("ws://{hub_addr}/v1/agent/ws?token={token}");
    let (socket, _) = tungstenite::connect(url.as_str()).context("WebSocket handshake")?;
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = socket.get_ref() {
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    }
    Ok(socket)
}

const E2E_HELLO: &str = r#"{"t":"hello","protocol":1,"v":"agent-e2e","capabilities":[],"slots":1}"#;

/// A scratch directory, removed on drop unless `EDGE_KEEP_TMP` is set (then its path is
/// printed so a failure can be inspected).
pub fn scratch_dir(name: &str) -> Result<tempfile::TempDir> {
    let keep = std::env::var_os("EDGE_KEEP_TMP").is_some();
    let dir = tempfile::Builder::new().prefix(&format!("edge-{name}-")).disable_cleanup(keep).tempdir()?;
    if keep {
        eprintln!("scratch dir kept: {}", dir.path().display());
    }
    Ok(dir)
}

/// A running `edge-agent login --device`: what it printed and the code it showed.
pub struct DeviceLoginRun {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub output: Vec<String>,
    pub user_code: Option<String>,
    pub complete_url: Option<String>,
}

impl DeviceLoginRun {
    fn take(&mut self, line: String) {
        if let Some(code) = line.trim().strip_prefix("code: ") {
            self.user_code = Some(code.trim().to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("or open ") {
            self.complete_url = rest.split_whitespace().next().map(str::to_owned);
        }
        self.output.push(line);
    }

    /// Waits for the process to end; its exit success and everything it printed.
    pub fn finish(mut self, timeout: Duration) -> Result<(bool, String)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                terminate(&mut self.child);
                bail!("edge-agent login --device still running after {timeout:?}:\n{}", self.output.join("\n"));
            }
            while let Ok(line) = self.lines.try_recv() {
                self.take(line);
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The readers end with the process; what they still hold arrives now.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.take(line);
        }
        Ok((status.success(), self.output.join("\n")))
    }
}

impl Drop for DeviceLoginRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            terminate(&mut self.child);
            let _ = self.child.wait();
        }
    }
}

/// Writes a copy of the agent binary `build` to `out` with `version` stamped in its version
/// slot (`edge-agent update stamp`), as the release pipeline does; the command's own logs go
/// beside `out`, never to the person's home.
pub fn stamp_agent(build: &Path, out: &Path, version: &str) -> Result<()> {
    let out_str = out.to_str().context("non-UTF-8 path")?;
    let status = Command::new(build)
        .arg("--data-dir")
        .arg(stamp_data_dir(out))
        .args(["update", "stamp", "--version", version, "--out", out_str])
        .output()
        .context("running edge-agent update stamp")?;
    if !status.status.success() {
        bail!("stamp {version}: {}", String::from_utf8_lossy(&status.stderr));
    }
    Ok(())
}

/// Where one-shot update commands on the binary at `beside` keep their logs.
pub fn stamp_data_dir(beside: &Path) -> PathBuf {
    beside.parent().unwrap_or(Path::new(".")).join("cli-data")
}
