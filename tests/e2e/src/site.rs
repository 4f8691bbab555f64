//! A small website on 127.0.0.1 for `http_request` jobs to fetch, so tests and the demo never
//! touch the internet. It counts the requests it serves so a test can prove a job ran once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub const HELLO_BODY: &str = "<h1>Hello from the Edge-Agent demo site</h1>";

pub struct Site {
    pub base_url: String,
    hits: Arc<Mutex<HashMap<String, u32>>>,
}

impl Site {
    /// Serves until the process exits. Routes: `GET /hello`, `POST /echo` (answers the request
    /// body), `GET /redirect` (302 to /hello), `GET /slow` (answers after 5 s), `GET /status/N`,
    /// `GET /bytes/N` (N bytes of [`pattern_byte`], streamed).
    pub fn start() -> std::io::Result<Site> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let counter = hits.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                thread::spawn(move || {
                    let _ = serve(stream, &counter);
                });
            }
        });
        Ok(Site { base_url, hits })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// How many requests `path` has received.
    pub fn hits(&self, path: &str) -> u32 {
        self.hits.lock().map(|h| h.get(path).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// Requests served so far, over all paths.
    pub fn total_hits(&self) -> u64 {
        self.hits.lock().map(|h| h.values().map(|n| u64::from(*n)).sum()).unwrap_or(0)
    }
}

fn serve(stream: TcpStream, hits: &Mutex<HashMap<String, u32>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("/").to_owned());
    let mut content_length = 0usize;
    let mut content_type = String::from("application/octet-stream");
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                "content-type" => content_type = value.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; content_length.min(16 * 1024 * 1024)];
    reader.read_exact(&mut body)?;
    if let Ok(mut h) = hits.lock() {
        *h.entry(path.clone()).or_default() += 1;
    }
    let (status, headers, payload): (&str, Vec<(String, String)>, Vec<u8>) = match (method.as_str(), path.as_str()) {
        ("GET", "/hello") => {
            ("200 OK", vec![("Content-Type".into(), "text/html; charset=utf-8".into())], HELLO_BODY.into())
        }
        ("POST", "/echo") => ("200 OK", vec![("Content-Type".into(), content_type)], body),
        ("GET", "/redirect") => ("302 Found", vec![("Location".into(), "/hello".into())], Vec::new()),
        ("GET", "/slow") => {
            thread::sleep(Duration::from_secs(5));
            ("200 OK", vec![], b"slow".to_vec())
        }
        ("GET", p) if p.starts_with("/bytes/") => {
            // Streamed, never held whole: tunnel tests fetch 100 MB through it.
            let Ok(length) = p.trim_start_matches("/bytes/").parse::<u64>() else {
                return respond(stream, "400 Bad Request", &[], b"/bytes/N");
            };
            let mut stream = stream;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes())?;
            let mut sent = 0u64;
            let mut chunk = vec![0u8; 64 * 1024];
            while sent < length {
                let n = chunk.len().min((length - sent) as usize);
                for (i, byte) in chunk[..n].iter_mut().enumerate() {
                    *byte = pattern_byte(sent + i as u64);
                }
                stream.write_all(&chunk[..n])?;
                sent += n as u64;
            }
            return stream.flush();
        }
        ("GET", p) if p.starts_with("/status/") => {
            let code = p.trim_start_matches("/status/");
            let line = format!("{code} Status");
            return respond(stream, &line, &[], b"");
        }
        _ => ("404 Not Found", vec![], b"not found".to_vec()),
    };
    respond(stream, status, &headers, &payload)
}

/// Byte `offset` of every `/bytes/N` answer (a pattern that does not repeat on a power of
/// two, so a misplaced chunk shows).
pub fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn respond(mut stream: TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head =
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\nX-Demo-Site: edge\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}
