//! The confinement rules of a browser job: which documents its pages may load (http and https
//! only, on the adapter's declared origins) and which local files it may hand to a site with
//! `setInputFiles` (only from the folders the job may upload from). Pure rules over URLs and
//! paths: [`crate::fence`] enforces the first inside the browser, the flow engine and the
//! runtime the second.
//!
//! It must never widen what an adapter declared (no wildcard origin, no scheme but http(s)),
//! never accept a file it has not resolved to a regular file inside an allowed folder, and
//! never tell a job whether a file outside those folders exists.

use crate::error::BrowserError;
use crate::flow::Adapter;
use std::path::{Component, Path, PathBuf};

/// Schemes of documents a job's page or frame may show without a request leaving: an empty
/// frame, an inline frame (both inherit their parent's origin), and Chromium's own error page,
/// which is what a frame shows after the fence refused its request.
const LOCAL_DOCUMENTS: [&str; 3] = ["about:blank", "about:srcdoc", "chrome-error://chromewebdata/"];

/// The origins a job's pages may load documents from: the adapter's `baseUrl` and its
/// `origins` list.
#[derive(Debug, Clone, PartialEq)]
pub struct Origins {
    allowed: Vec<url::Origin>,
}

impl Origins {
    /// The adapter's origins; an `origins` entry that is not a bare http(s) origin is refused
    /// (`https://a.example/path` would suggest a narrower rule than the browser can keep).
    pub fn of(adapter: &Adapter) -> Result<Origins, BrowserError> {
        let base = url::Url::parse(&adapter.base_url)
            .map_err(|e| BrowserError::BadFlow(format!("adapter {:?}: baseUrl is not a URL: {e}", adapter.name)))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(BrowserError::NotAllowed(format!(
                "adapter {:?}: baseUrl must be an http or https URL, not a {}: URL",
                adapter.name,
                base.scheme()
            )));
        }
        let mut allowed = vec![base.origin()];
        for entry in &adapter.origins {
            let origin = parse_origin(entry).map_err(|why| {
                BrowserError::NotAllowed(format!(
                    "adapter {:?}: origins entry {entry:?} {why}; write it as scheme://host[:port], for example \
                     \"https://login.site.example\"",
                    adapter.name
                ))
            })?;
            if !allowed.contains(&origin) {
                allowed.push(origin);
            }
        }
        Ok(Origins { allowed })
    }

    /// The allowed origins, for messages: `http://a.example, https://b.example`.
    pub fn list(&self) -> String {
        self.allowed.iter().map(url::Origin::ascii_serialization).collect::<Vec<_>>().join(", ")
    }

    /// Whether a navigation (top level, frame, redirect hop) to `url` is allowed: an http(s)
    /// URL on one of the origins. The refusal names the URL's origin or scheme and the rule.
    pub fn check(&self, url: &str) -> Result<(), BrowserError> {
        let parsed = url::Url::parse(url)
            .map_err(|e| BrowserError::NotAllowed(format!("navigation refused: {url:?} is not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(BrowserError::NotAllowed(format!(
                "navigation refused: {} is a {}: URL; a browser job opens only http and https pages on its \
                 adapter's origins ({})",
                shown(url),
                parsed.scheme(),
                self.list()
            )));
        }
        let origin = parsed.origin();
        if self.allowed.contains(&origin) {
            return Ok(());
        }
        Err(BrowserError::NotAllowed(format!(
            "navigation refused: {} is not one of the adapter's origins ({}); an adapter lists every origin its \
             pages and frames come from in `origins`",
            origin.ascii_serialization(),
            self.list()
        )))
    }

    /// Whether a frame may show the document it committed: what [`Origins::check`] allows,
    /// an empty or inline frame, Chromium's error page, or a `blob:` document of an allowed
    /// origin. This catches what no request went out for (a `data:` frame).
    pub fn check_committed(&self, url: &str) -> Result<(), BrowserError> {
        if LOCAL_DOCUMENTS.iter().any(|local| url == *local || url.starts_with(&format!("{local}#"))) {
            return Ok(());
        }
        if let Some(inner) = url.strip_prefix("blob:") {
            // A blob URL carries the origin of the document that made it.
            if let Ok(parsed) = url::Url::parse(inner) {
                if self.allowed.contains(&parsed.origin()) {
                    return Ok(());
                }
            }
        }
        self.check(url)
    }
}

fn parse_origin(entry: &str) -> Result<url::Origin, &'static str> {
    let url = url::Url::parse(entry.trim()).map_err(|_| "is not a URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("is not an http or https origin");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("carries a user name or password");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("has a path, query or fragment; an origin is scheme, host and port only");
    }
    Ok(url.origin())
}

/// A URL as a refusal shows it: short, and for http(s) never its path or query (which can
/// carry a recipient or a token).
pub(crate) fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => parsed.origin().ascii_serialization(),
        _ => {
            let short: String = url.chars().take(80).collect();
            if short.len() < url.len() {
                format!("{short}…")
            } else {
                short
            }
        }
    }
}

/// The folders a job may upload files from, each with what it is (for messages), and the
/// folder relative paths are read in.
#[derive(Debug, Clone, Default)]
pub struct Uploads {
    /// (the folder as given, the folder resolved, what it is)
    folders: Vec<(PathBuf, PathBuf, String)>,
    /// Relative paths are resolved against this folder (the job's bundle, else the uploads
    /// folder); without one they are refused.
    base: Option<PathBuf>,
}

impl Uploads {
    /// No folder: nothing can be uploaded.
    pub fn none() -> Uploads {
        Uploads::default()
    }

    /// Adds a folder files may come from (`what`: "the job's bundle", "the uploads folder"…).
    /// The first folder added is where relative paths are read. A folder that does not exist
    /// adds nothing (there is nothing in it to upload).
    pub fn allow(mut self, folder: &Path, what: &str) -> Uploads {
        if let Ok(resolved) = std::fs::canonicalize(folder) {
            if resolved.is_dir() {
                if self.base.is_none() {
                    self.base = Some(resolved.clone());
                }
                self.folders.push((absolute(folder), resolved, what.to_owned()));
            }
        }
        self
    }

    /// The folders, for messages: `the uploads folder (/home/ann/Uploads)`.
    pub fn describe(&self) -> String {
        if self.folders.is_empty() {
            return "none".to_owned();
        }
        self.folders
            .iter()
            .map(|(given, _, what)| format!("{what} ({})", given.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The file a job may upload for `file`: resolved (symbolic links followed) to a regular
    /// file inside one of the folders. Whether a file outside them exists is never checked,
    /// so a refusal tells nothing about the rest of the machine.
    pub fn resolve(&self, file: &str) -> Result<PathBuf, BrowserError> {
        let refused = |why: String| {
            BrowserError::NotAllowed(format!(
                "upload refused: {file:?} {why}; a job uploads only files from its own bundle, files it sent \
                 itself (`params.media`) and files in the uploads folder the person chose (`edge-agent settings \
                 uploads-dir PATH`); allowed here: {}",
                self.describe()
            ))
        };
        let path = Path::new(file);
        if file.trim().is_empty() {
            return Err(BrowserError::BadFlow("setInputFiles: an empty file path".into()));
        }
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(refused("contains `..`".into()));
        }
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            match &self.base {
                Some(base) => base.join(path),
                None => return Err(refused("is a relative path and this job has no folder to read it in".into())),
            }
        };
        // First by name alone: a path that is not inside a folder is refused without
        // looking at the disk.
        if !self.folders.iter().any(|(given, resolved, _)| path.starts_with(given) || path.starts_with(resolved)) {
            return Err(refused("is not inside a folder this job may upload from".into()));
        }
        let resolved = match std::fs::canonicalize(&path) {
            Ok(resolved) => resolved,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BrowserError::BadFlow(format!("setInputFiles: no file {file:?} in {}", self.describe())))
            }
            Err(e) => return Err(BrowserError::Io(format!("setInputFiles: {file:?}: {e}"))),
        };
        if !self.folders.iter().any(|(_, folder, _)| resolved.starts_with(folder)) {
            return Err(refused("leads outside the folder through a symbolic link".into()));
        }
        let metadata = std::fs::metadata(&resolved).map_err(|e| BrowserError::Io(format!("{file:?}: {e}")))?;
        if metadata.is_dir() {
            return Err(refused("is a folder, not a file".into()));
        }
        if !metadata.is_file() {
            return Err(refused("is not a regular file (a device, socket or pipe)".into()));
        }
        Ok(resolved)
    }
}

/// `path` made absolute against the current directory, without touching the disk.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(extra: &str) -> Adapter {
        serde_yaml::from_str(&format!("name: s\nbaseUrl: https://s.example\n{extra}")).unwrap()
    }

    fn refusal(result: Result<impl std::fmt::Debug, BrowserError>) -> String {
        match result {
            Err(e @ BrowserError::NotAllowed(_)) => {
                assert_eq!(e.code().as_str(), "POLICY_VIOLATION");
                e.to_string()
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn pages_are_http_on_declared_origins_only() {
        let origins = Origins::of(&adapter("origins: ['https://login.s.example', 'http://127.0.0.1:8080']")).unwrap();
        for ok in [
            "https://s.example/subscribers?page=2",
            "https://s.example:443/x",
            "https://login.s.example/oauth",
            "http://127.0.0.1:8080/",
        ] {
            origins.check(ok).unwrap();
        }
        for (url, needle) in [
            ("file:///etc/passwd", "file:///etc/passwd is a file: URL"),
            ("data:text/html,<p>x</p>", "is a data: URL"),
            ("chrome://settings", "is a chrome: URL"),
            ("javascript:alert(1)", "is a javascript: URL"),
            ("view-source:https://s.example/", "is a view-source: URL"),
            ("ftp://s.example/", "is a ftp: URL"),
            ("http://s.example/", "http://s.example is not one of the adapter's origins"),
            ("https://evil.example/?to=ann", "https://evil.example is not one of"),
            ("https://s.example.evil.example/", "is not one of"),
            ("http://127.0.0.1:8081/", "http://127.0.0.1:8081 is not one of"),
        ] {
            let message = refusal(origins.check(url));
            assert!(message.contains(needle), "{url}: {message}");
            assert!(message.contains("https://s.example, https://login.s.example, http://127.0.0.1:8080"), "{message}");
            assert!(!message.contains("to=ann"), "a refusal never shows a path or query: {message}");
        }
    }

    #[test]
    fn frames_may_be_empty_inline_error_pages_or_blobs_of_an_allowed_origin() {
        let origins = Origins::of(&adapter("")).unwrap();
        for ok in [
            "about:blank",
            "about:srcdoc",
            "chrome-error://chromewebdata/",
            "blob:https://s.example/1b2c",
            "https://s.example/",
        ] {
            origins.check_committed(ok).unwrap();
        }
        for bad in ["data:text/html,x", "blob:https://evil.example/1b2c", "chrome://version", "about:config"] {
            refusal(origins.check_committed(bad));
        }
    }

    #[test]
    fn an_origins_entry_is_a_bare_http_origin() {
        for (entry, needle) in [
            ("file:///etc", "is not an http or https origin"),
            ("https://a.example/path", "has a path"),
            ("https://a.example/?q", "has a path, query or fragment"),
            ("https://user:pw@a.example", "user name or password"),
            ("*.example", "is not a URL"),
        ] {
            let message = refusal(Origins::of(&adapter(&format!("origins: ['{entry}']"))));
            assert!(message.contains(needle) && message.contains("scheme://host[:port]"), "{entry}: {message}");
        }
        let message = refusal(Origins::of(&Adapter { base_url: "file:///etc/passwd".into(), ..adapter("") }));
        assert!(message.contains("baseUrl must be an http or https URL"), "{message}");
    }

    #[test]
    fn adapter_urls_off_its_origins_are_refused_when_the_adapter_is_read() {
        // The security review's scrape_subs attack: a subscribers page that is a local file.
        let message = refusal(crate::flow::parse_adapter(
            "name: s\nbaseUrl: https://s.example\nurls: {subscribers: 'file:///etc/passwd'}\n",
        ));
        assert!(message.contains("urls.subscribers") && message.contains("file: URL"), "{message}");
        let message = refusal(crate::flow::parse_adapter(
            "name: s\nbaseUrl: https://s.example\nurls: {login: 'https://evil.example/login'}\n",
        ));
        assert!(message.contains("urls.login") && message.contains("https://evil.example"), "{message}");
        crate::flow::parse_adapter(
            "name: s\nbaseUrl: https://s.example\norigins: ['https://id.example']\nurls: {login: 'https://id.example/login', compose: '/m?to={{params.recipient|url}}'}\n",
        )
        .unwrap();
    }

    #[test]
    fn uploads_come_from_the_allowed_folders_only() {
        let home = tempfile::tempdir().unwrap();
        let uploads = home.path().join("Uploads");
        let secrets = home.path().join("secrets");
        std::fs::create_dir_all(uploads.join("clips")).unwrap();
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(uploads.join("teaser.png"), b"png").unwrap();
        std::fs::write(uploads.join("clips/intro.mp4"), b"mp4").unwrap();
        std::fs::write(secrets.join("id_ed25519"), b"key").unwrap();
        let allowed = Uploads::none().allow(&uploads, "the uploads folder");

        let teaser = allowed.resolve(&uploads.join("teaser.png").display().to_string()).unwrap();
        assert_eq!(std::fs::read(&teaser).unwrap(), b"png");
        assert_eq!(allowed.resolve("clips/intro.mp4").unwrap(), teaser.parent().unwrap().join("clips/intro.mp4"));

        let key = secrets.join("id_ed25519").display().to_string();
        let message = refusal(allowed.resolve(&key));
        assert!(message.contains("is not inside a folder this job may upload from"), "{message}");
        assert!(message.contains(&format!("the uploads folder ({})", uploads.display())), "{message}");
        // Whether a file outside exists is not revealed.
        let missing = refusal(allowed.resolve(&secrets.join("nothing-here").display().to_string()));
        assert_eq!(missing.replace("nothing-here", "id_ed25519"), message);
        refusal(allowed.resolve("/etc/passwd"));
        let message = refusal(allowed.resolve(&format!("{}/../secrets/id_ed25519", uploads.display())));
        assert!(message.contains("contains `..`"), "{message}");
        refusal(allowed.resolve("../secrets/id_ed25519"));
        let message = refusal(allowed.resolve(&uploads.join("clips").display().to_string()));
        assert!(message.contains("is a folder"), "{message}");
        let missing = allowed.resolve(&uploads.join("gone.png").display().to_string()).unwrap_err();
        assert_eq!(missing.code().as_str(), "BAD_PAYLOAD", "{missing}");

        #[cfg(unix)]
        {
            // A link inside the folder that leads out of it is refused; one that stays is fine.
            std::os::unix::fs::symlink(secrets.join("id_ed25519"), uploads.join("cover.png")).unwrap();
            std::os::unix::fs::symlink(&secrets, uploads.join("more")).unwrap();
            std::os::unix::fs::symlink(uploads.join("teaser.png"), uploads.join("same.png")).unwrap();
            let message = refusal(allowed.resolve(&uploads.join("cover.png").display().to_string()));
            assert!(message.contains("symbolic link"), "{message}");
            refusal(allowed.resolve("more/id_ed25519"));
            assert_eq!(allowed.resolve("same.png").unwrap(), teaser);
            let message = refusal(Uploads::none().allow(Path::new("/dev"), "the uploads folder").resolve("/dev/null"));
            assert!(message.contains("not a regular file"), "{message}");
        }

        let nothing = Uploads::none();
        let message = refusal(nothing.resolve(&uploads.join("teaser.png").display().to_string()));
        assert!(
            message.contains("allowed here: none") && message.contains("edge-agent settings uploads-dir"),
            "{message}"
        );
        refusal(nothing.resolve("teaser.png"));
    }
}
