//! Shared storage for repositories and run records (issue 21), against a real S3-compatible
//! server (`s3s-fs`, started by each test on 127.0.0.1, see `edge_e2e::s3`):
//!
//! - the hub's storage seam (`edge_hub::blobs`) behaves the same on the local file system
//!   and on S3: put, get, ranged get, list, absent keys, overwrite, create-once, delete, and
//!   a clear error when the store refuses the credentials;
//! - three `edge-hub serve` processes on one PostgreSQL and one bucket: a signed shell
//!   bundle published through the first, an agent logged in to the second downloads,
//!   verifies and runs it, and its run report is read through the third.

use anyhow::{ensure, Context, Result};
use edge_e2e::pg::TempDatabase;
use edge_e2e::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use edge_e2e::{scratch_dir, wait_until, Agent, Binaries, Hub};
use edge_hub::blobs::{Blobs, S3Config, StorageConfig};
use edge_hub::secret::Secret;
use serde_json::json;
use std::time::Duration;

const BUCKET: &str = "edge-hub-fleet";
const CREATOR: &str = "creator-shared";
const JWT_SECRET: &str = "shared-storage-test-jwt-secret-0123456789";
const TIMEOUT: Duration = Duration::from_secs(60);

fn s3_config(server: &S3Server, prefix: &str, secret: &str) -> StorageConfig {
    StorageConfig::S3(S3Config {
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        endpoint: Some(server.endpoint.clone()),
        region: "us-east-1".into(),
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: Secret::new(secret),
    })
}

/// What every store behind the hub must do the same way.
async fn conformance(blobs: &Blobs) -> Result<()> {
    let at = blobs.location().to_owned();
    ensure!(blobs.get("conf/absent.json").await?.is_none(), "{at}: an absent key reads as None");
    ensure!(blobs.head("conf/absent.json").await?.is_none(), "{at}: an absent key has no metadata");
    ensure!(blobs.list("conf").await?.is_empty(), "{at}: an empty prefix lists nothing");

    blobs.put("conf/a/one.json", "first".into()).await?;
    ensure!(blobs.get("conf/a/one.json").await?.as_deref() == Some(&b"first"[..]), "{at}: get after put");
    blobs.put("conf/a/one.json", "second!".into()).await?;
    ensure!(blobs.get("conf/a/one.json").await?.as_deref() == Some(&b"second!"[..]), "{at}: overwrite");
    let (size, _) = blobs.head("conf/a/one.json").await?.context("head after put")?;
    ensure!(size == 7, "{at}: size {size}");

    ensure!(blobs.create("conf/b/once", "mine".into()).await?, "{at}: create of a new key");
    ensure!(!blobs.create("conf/b/once", "theirs".into()).await?, "{at}: a second create must not overwrite");
    ensure!(blobs.get("conf/b/once").await?.as_deref() == Some(&b"mine"[..]), "{at}: the first create stays");

    let ranged = blobs.get_range("conf/a/one.json", Some((1, 3))).await?.context("ranged read")?;
    ensure!((ranged.length, ranged.start, ranged.end) == (7, 1, 3), "{at}: range bounds");
    let body: Vec<u8> = futures_util::TryStreamExt::try_concat(ranged.body.map_ok(|b| b.to_vec())).await?;
    ensure!(body == b"eco", "{at}: range bytes {body:?}");

    let mut listed: Vec<(String, u64)> = blobs.list("conf").await?.into_iter().map(|l| (l.key, l.size)).collect();
    listed.sort();
    ensure!(listed == [("conf/a/one.json".to_owned(), 7), ("conf/b/once".to_owned(), 4)], "{at}: listing {listed:?}");
    ensure!(blobs.list("conf/a").await?.len() == 1, "{at}: a listing stays under its prefix");

    blobs.delete("conf/b/once").await?;
    blobs.delete("conf/b/once").await.context("deleting an absent key is fine")?;
    ensure!(blobs.get("conf/b/once").await?.is_none(), "{at}: deleted");
    Ok(())
}

use futures_util::TryStreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_seam_behaves_the_same_on_disk_and_on_s3() -> Result<()> {
    let dir = tempfile::tempdir()?;
    conformance(&Blobs::open(&StorageConfig::Local(dir.path().to_path_buf()))?).await?;

    let server = S3Server::start(&[BUCKET])?;
    let s3 = Blobs::open(&s3_config(&server, "conformance/run", SECRET_KEY))?;
    conformance(&s3).await?;
    // The keys are where the layout says, under the prefix (s3s-fs keeps objects as files).
    ensure!(server.bucket_dir(BUCKET).join("conformance/run/conf/a/one.json").is_file());

    let refused = Blobs::open(&s3_config(&server, "conformance/run", "not-the-secret"))?;
    let error = refused.get("conf/a/one.json").await.expect_err("a wrong secret must be refused").to_string();
    ensure!(error.contains("refused the credentials") && error.contains("AWS_SECRET_ACCESS_KEY"), "{error}");
    ensure!(!error.contains("not-the-secret"), "the secret must never be in a message: {error}");
    Ok(())
}

#[test]
fn three_hubs_share_one_bucket_publish_on_one_run_through_another_read_on_the_third() -> Result<()> {
    // Under `cargo xtask test` (or CI) a missing PostgreSQL is a failure, never a skip.
    if !edge_e2e::pg::check()? {
        return Ok(());
    }
    let db = TempDatabase::create("storage")?;
    let server = S3Server::start(&[BUCKET])?;
    let dir = scratch_dir("shared-storage")?;
    let bins = Binaries::locate()?;
    let mut env = server.hub_env(BUCKET, "fleet");
    env.push(("EDGE_HUB_JWT_SECRET".into(), JWT_SECRET.into()));
    let mut hubs = Vec::new();
    for i in 0..3 {
        let hub_dir = dir.path().join(format!("hub{i}"));
        // A bundle directory of its own: it must stay empty, everything goes to the bucket.
        let mut env = env.clone();
        env.push(("EDGE_HUB_BUNDLE_DIR".into(), hub_dir.join("bundles").display().to_string()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        hubs.push(Hub::start_with_database(&bins, &hub_dir, &db.url, &env, &["--hb-interval-secs", "1"])?);
    }
    let key = hubs[0].api_key()?;

    // Published through hub 0 (its CLI, with the same storage settings).
    let script = "echo \"shared storage says $1\"\n";
    let bundle = hubs[0].publish_shell_bundle(CREATOR, "hello", "1.0.0", script)?;
    ensure!(bundle.published["changed"] == true, "{}", bundle.published);
    let fleet = server.bucket_dir(BUCKET).join("fleet");
    ensure!(fleet.join("repo/metadata/timestamp.json").is_file(), "the repository is in the bucket");
    ensure!(!fleet.join("repo/.lock").exists(), "the writer lock is released after the publish");

    // Every hub serves the same root.
    let root = |hub: &Hub| -> Result<String> {
        Ok(ureq::get(&format!("{}/v1/bundles/root.json", hub.url)).call()?.into_string()?)
    };
    let first_root = root(&hubs[0])?;
    for hub in &hubs[1..] {
        ensure!(root(hub)? == first_root, "every hub serves the root from the bucket");
    }

    // An agent of hub 1 downloads, verifies and runs the bundle.
    let profile = format!("e2e-shared-storage-{}", std::process::id());
    let mut agent = Agent::new(&bins, &profile, "kernel", &dir.path().join("agent"));
    agent.login(&hubs[1].url, &hubs[1].enroll_token(CREATOR)?)?;
    agent.grant(&["bundle"])?;
    let (ok, status) = agent.oneshot(&["status"])?;
    ensure!(ok && status.contains(&bundle.root_fingerprint), "the agent holds the shared root: {status}");
    agent.run(&["--hb-interval-secs", "1"])?;
    hubs[1]
        .wait_agent_online(&key, agent.agent_id(), TIMEOUT)
        .map_err(|e| e.context(format!("agent log:\n{}", agent.run_log())))?;

    // The job goes in through hub 2; the shared queue hands it to the agent on hub 1.
    let job = hubs[2].submit_job(
        &key,
        &json!({ "type": "bundle", "creatorId": CREATOR,
                 "payload": { "bundle": "hello", "version": "latest", "args": ["three hubs"] } }),
    )?;
    let id = job["id"].as_str().context("job id")?.to_owned();
    let done =
        hubs[2].wait_job_done(&key, &id, TIMEOUT).map_err(|e| e.context(format!("agent log:\n{}", agent.run_log())))?;
    ensure!(done["status"] == "succeeded", "{done}\nagent log:\n{}", agent.run_log());
    ensure!(done["result"]["stdout"] == "shared storage says three hubs\n", "{done}");
    let run_id = done["result"]["runId"].as_str().context("runId")?.to_owned();

    // The agent reported to hub 1; hub 2 and hub 0 read the record from the bucket.
    let path = format!("/v1/bundles/runs/{run_id}");
    wait_until(Duration::from_secs(15), || Ok(hubs[2].get(&key, &path).is_ok()))
        .context("the run report never became readable through hub 2")?;
    let record = hubs[2].get(&key, &path)?;
    ensure!(record["status"] == "succeeded" && record["jobId"] == id.as_str(), "{record}");
    ensure!(record["agentId"] == agent.agent_id(), "{record}");
    ensure!(record["deliveries"] == 1, "recorded once: {record}");
    ensure!(hubs[0].get(&key, &path)? == record, "hub 0 reads the same record");
    ensure!(fleet.join(format!("runs/{run_id}.json")).is_file(), "the run report is in the bucket");

    // Nothing of it went to any hub's own disk.
    for i in 0..3 {
        let local = dir.path().join(format!("hub{i}")).join("bundles");
        ensure!(!local.join("repo").exists() && !local.join("runs").exists(), "hub {i} wrote to {}", local.display());
    }
    drop(agent);
    for hub in &mut hubs {
        hub.shutdown();
    }
    Ok(())
}

/// Runs `edge-hub ARGS` with `env` and waits (bounded) for it to exit; (success, stderr).
fn run_hub(bins: &Binaries, args: &[&str], env: &[(String, String)]) -> Result<(bool, String)> {
    let mut child = std::process::Command::new(&bins.hub)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting edge-hub")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("edge-hub {args:?} was still running after 30 s: it must stop on a refused store");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    Ok((status.success(), stderr))
}

#[test]
fn a_hub_and_its_cli_refused_by_the_store_stop_and_say_what_to_check() -> Result<()> {
    let server = S3Server::start(&[BUCKET])?;
    let dir = tempfile::tempdir()?;
    let bins = Binaries::locate()?;
    let database = format!("sqlite://{}", dir.path().join("hub.db").display());
    let mut env = server.hub_env(BUCKET, "refused");
    for (name, value) in &mut env {
        if name == "AWS_SECRET_ACCESS_KEY" {
            *value = "a-wrong-secret-value".into();
        }
    }
    let (ok, stderr) = run_hub(&bins, &["--database-url", &database, "serve", "--listen", "127.0.0.1:0"], &env)?;
    ensure!(!ok, "the hub must not start on a store that refuses it: {stderr}");
    ensure!(stderr.contains("refused the credentials") && stderr.contains(&server.endpoint), "{stderr}");
    ensure!(!stderr.contains("a-wrong-secret-value"), "the secret must never be printed: {stderr}");

    let (ok, stderr) = run_hub(&bins, &["--database-url", &database, "bundle", "root", "fingerprint"], &env)?;
    ensure!(!ok && stderr.contains("refused the credentials"), "{stderr}");

    // An endpoint where nothing listens: the message names it and what to check.
    for (name, value) in &mut env {
        match name.as_str() {
            "AWS_SECRET_ACCESS_KEY" => *value = SECRET_KEY.into(),
            "AWS_ENDPOINT_URL" => *value = "http://127.0.0.1:9".into(),
            _ => {}
        }
    }
    let (ok, stderr) = run_hub(&bins, &["--database-url", &database, "serve", "--listen", "127.0.0.1:0"], &env)?;
    ensure!(!ok && stderr.contains("127.0.0.1:9") && stderr.contains("AWS_ENDPOINT_URL"), "{stderr}");
    Ok(())
}
