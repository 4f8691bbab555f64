//! A real S3-compatible server for the shared-storage tests: `s3s-fs` (the S3 protocol of
//! the `s3s` crate over a directory), run in-process on 127.0.0.1 with signature-checked
//! credentials, started and stopped by the test. Buckets are folders of its root, so a test
//! can also look at what landed where. It must never listen anywhere but loopback.

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::{Path, PathBuf};

pub const ACCESS_KEY: &str = "edge-test-access";
pub const SECRET_KEY: &str = "edge-test-secret-key-0123456789";

/// A running server; stopped (and its files removed) when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`, what `AWS_ENDPOINT_URL` is set to.
    pub endpoint: String,
    root: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    /// Starts a server holding the (empty) `buckets`.
    pub fn start(buckets: &[&str]) -> Result<S3Server> {
        let root = tempfile::tempdir().context("a folder for the S3 server")?;
        for bucket in buckets {
            std::fs::create_dir(root.path().join(bucket)).with_context(|| format!("creating bucket {bucket}"))?;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the S3 server on loopback")?;
        listener.set_nonblocking(true)?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let store = s3s_fs::FileSystem::new(root.path()).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
        let mut builder = s3s::service::S3ServiceBuilder::new(store);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("a runtime for the S3 server")?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                loop {
                    let socket = tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => match accepted {
                            Ok((socket, _)) => socket,
                            Err(_) => continue,
                        },
                    };
                    let service = service.clone();
                    tokio::spawn(async move {
                        let connection = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        let _ = connection.serve_connection(TokioIo::new(socket), service).await;
                    });
                }
            });
        });
        Ok(S3Server { endpoint, root, stop: Some(stop), thread: Some(thread) })
    }

    /// The folder behind a bucket (objects are files under their keys).
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.path().join(bucket)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The environment a hub needs to use `s3://bucket/prefix` on this server.
    pub fn hub_env(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        vec![
            ("EDGE_HUB_STORAGE".into(), format!("s3://{bucket}/{prefix}")),
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
