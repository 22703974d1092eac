//! A real nginx on a loopback address: plain HTTP, optional HTTPS with one `server` block per
//! TLS name (so it answers by SNI), configurable locations, and a JSON access log.
//!
//! nginx runs in the foreground as a single process (`master_process off; daemon off;`), with
//! every file (config, content, certificates, logs, pid, temp files) in its own tempdir.
//!
//! The access log has one JSON object per request, keys named after the nginx variables they
//! hold (all values are strings; an absent value is `""`): `host`, `http_host` (the raw `Host`
//! header), `ssl_server_name` (SNI), `scheme`, `server_name` (the `server` block that answered),
//! `server_port`, `request_method`, `request_uri`, `server_protocol`, `http_authorization`,
//! `content_type`, `content_length`, `request_length`, `request_body` (only filled by
//! [`Location::body_sink`]), `http_connection`, `http_upgrade`, `http_user_agent`,
//! `remote_addr`, `status`, `body_bytes_sent`, `request_completion` (`"OK"` when the response
//! was sent completely), `connection`, `connection_requests`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::pattern;
use crate::ports::free_port;
use crate::process::{
    find_program, poll_until, probe_child, read_lossy, tcp_accepts, ChildGuard, Probe,
    STARTUP_TIMEOUT,
};

const LOG_FORMAT: &str = concat!(
    r#"'{"host":"$host","http_host":"$http_host","ssl_server_name":"$ssl_server_name","#,
    r#""scheme":"$scheme","server_name":"$server_name","server_port":"$server_port","#,
    r#""request_method":"$request_method","request_uri":"$request_uri","#,
    r#""server_protocol":"$server_protocol","http_authorization":"$http_authorization","#,
    r#""content_type":"$content_type","content_length":"$content_length","#,
    r#""request_length":"$request_length","request_body":"$request_body","#,
    r#""http_connection":"$http_connection","http_upgrade":"$http_upgrade","#,
    r#""http_user_agent":"$http_user_agent","remote_addr":"$remote_addr","status":"$status","#,
    r#""body_bytes_sent":"$body_bytes_sent","request_completion":"$request_completion","#,
    r#""connection":"$connection","connection_requests":"$connection_requests"}'"#,
);

/// The JSON body of [`Location::details`] (variables are not JSON-escaped: keep test values
/// free of `"` and `\`).
const DETAILS: &str = concat!(
    r#"{"host":"$host","http_host":"$http_host","ssl_server_name":"$ssl_server_name","#,
    r#""scheme":"$scheme","server_name":"$server_name","request_method":"$request_method","#,
    r#""request_uri":"$request_uri","http_authorization":"$http_authorization","#,
    r#""content_length":"$content_length","content_type":"$content_type"}\n"#,
);

/// A running nginx, killed on drop.
#[derive(Debug)]
pub struct Nginx {
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    sha256: HashMap<String, String>,
    // Field order: the process dies before its directory is removed.
    child: ChildGuard,
    dir: TempDir,
}

/// Configures an [`Nginx`]. Every location is served by every `server` block (plain HTTP and
/// each TLS name).
#[derive(Debug, Clone)]
pub struct NginxBuilder {
    ip: IpAddr,
    tls_sites: Vec<TlsSite>,
    locations: Vec<Location>,
    http2: bool,
    server_snippets: Vec<String>,
    http_snippets: Vec<String>,
}

#[derive(Debug, Clone)]
struct TlsSite {
    name: String,
    chain_pem: String,
    key_pem: String,
}

/// One `location` of the nginx config; build it with the constructors.
#[derive(Debug, Clone)]
pub struct Location {
    kind: LocationKind,
}

#[derive(Debug, Clone)]
enum LocationKind {
    File {
        path: String,
        content: Vec<u8>,
        content_type: String,
    },
    Pattern {
        path: String,
        len: u64,
    },
    Details {
        prefix: String,
    },
    Status {
        path: String,
        status: u16,
        content_type: String,
        body: String,
    },
    BodySink {
        path: String,
        status: u16,
        body: String,
    },
    Raw {
        matcher: String,
        block: String,
    },
}

impl Location {
    /// `path` (exact match) serves `content` as a static file with `content_type`.
    pub fn file(path: &str, content: impl Into<Vec<u8>>, content_type: &str) -> Self {
        Self::from(LocationKind::File {
            path: path.to_owned(),
            content: content.into(),
            content_type: content_type.to_owned(),
        })
    }

    /// `path` (exact match) serves `json` as a static `application/json` file.
    pub fn json(path: &str, json: &str) -> Self {
        Self::file(path, json.as_bytes(), "application/json")
    }

    /// `path` (exact match) serves the first `len` bytes of [`pattern`] as a static file
    /// (`application/octet-stream`); [`Nginx::sha256`] gives its digest.
    pub fn pattern_file(path: &str, len: u64) -> Self {
        Self::from(LocationKind::Pattern {
            path: path.to_owned(),
            len,
        })
    }

    /// Every path starting with `prefix` answers 200 with a JSON object describing the
    /// request: `host`, `http_host`, `ssl_server_name`, `scheme`, `server_name`,
    /// `request_method`, `request_uri`, `http_authorization`, `content_length`, `content_type`.
    pub fn details(prefix: &str) -> Self {
        Self::from(LocationKind::Details {
            prefix: prefix.to_owned(),
        })
    }

    /// `path` (exact match) answers `status` with `body` (any text) and `content_type`.
    pub fn status(path: &str, status: u16, content_type: &str, body: &str) -> Self {
        Self::from(LocationKind::Status {
            path: path.to_owned(),
            status,
            content_type: content_type.to_owned(),
            body: body.to_owned(),
        })
    }

    /// `path` (exact match) reads the request body (up to 16 MiB) so that the access log's
    /// `request_body` holds it, then answers `status` with the JSON `body`.
    pub fn body_sink(path: &str, status: u16, body: &str) -> Self {
        Self::from(LocationKind::BodySink {
            path: path.to_owned(),
            status,
            body: body.to_owned(),
        })
    }

    /// `location <matcher> { <block> }` verbatim, e.g. `raw("/slow", "limit_rate 1k; ...")`.
    /// A block with its own `add_header` loses the server's `X-Underpass-Server` header.
    pub fn raw(matcher: &str, block: &str) -> Self {
        Self::from(LocationKind::Raw {
            matcher: matcher.to_owned(),
            block: block.to_owned(),
        })
    }
}

impl From<LocationKind> for Location {
    fn from(kind: LocationKind) -> Self {
        Location { kind }
    }
}

impl Nginx {
    /// A builder for an nginx listening on `ip` (ports chosen free).
    pub fn builder(ip: IpAddr) -> NginxBuilder {
        NginxBuilder {
            ip,
            tls_sites: Vec::new(),
            locations: Vec::new(),
            http2: false,
            server_snippets: Vec::new(),
            http_snippets: Vec::new(),
        }
    }

    /// The plain HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The HTTPS listener, when TLS sites were configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The hex SHA-256 of the file served at `path` (file and pattern locations).
    pub fn sha256(&self, path: &str) -> Option<&str> {
        self.sha256.get(path).map(String::as_str)
    }

    /// The tempdir holding the config, content and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The error log (level `info`: it records client aborts such as "client prematurely
    /// closed connection").
    pub fn error_log(&self) -> String {
        read_lossy(&self.dir.path().join("error.log"))
    }

    /// The access log so far, one JSON object per request (see the module docs for keys).
    ///
    /// nginx writes a line when a request *finishes*, which can be just after the client read
    /// the response: use [`Nginx::wait_access_log`] to wait for a count.
    ///
    /// # Panics
    /// When a line is not JSON (a request value with bytes that are not UTF-8).
    pub fn access_log_lines(&self) -> Vec<serde_json::Value> {
        read_lossy(&self.dir.path().join("access.log"))
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// Waits until the access log has at least `count` lines (or `timeout` passes) and returns
    /// all lines. nginx writes a line after the response, on its own schedule: this polls the
    /// file (2 ms to 50 ms apart), a condition and not a sleep standing in for one.
    ///
    /// # Panics
    /// When the count is not reached in time.
    pub async fn wait_access_log(&self, count: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let lines = self.access_log_lines();
            if lines.len() >= count {
                return lines;
            }
            if start.elapsed() > timeout {
                panic!(
                    "nginx access log has {} lines, expected {count} within {timeout:?}: {lines:#?}",
                    lines.len()
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl NginxBuilder {
    /// Adds an HTTPS `server` block for `name` presenting `chain_pem`/`key_pem`. The first
    /// site is the default one (answers an unknown or absent SNI).
    pub fn tls_site(mut self, name: &str, chain_pem: &str, key_pem: &str) -> Self {
        self.tls_sites.push(TlsSite {
            name: name.to_owned(),
            chain_pem: chain_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        });
        self
    }

    /// Adds a location to every server block.
    pub fn location(mut self, location: Location) -> Self {
        self.locations.push(location);
        self
    }

    /// Offers HTTP/2 by ALPN on the HTTPS listener.
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// Adds directives verbatim to every `server` block.
    pub fn server_snippet(mut self, snippet: &str) -> Self {
        self.server_snippets.push(snippet.to_owned());
        self
    }

    /// Adds directives verbatim to the `http` block (e.g. a whole extra `server`).
    pub fn http_snippet(mut self, snippet: &str) -> Self {
        self.http_snippets.push(snippet.to_owned());
        self
    }

    /// Writes the files, starts nginx and waits until its listeners accept connections. The
    /// blocking work (writing large files, polling for readiness) runs on a blocking thread.
    ///
    /// # Panics
    /// When nginx is missing or does not start (the message includes its error log).
    pub async fn start(self) -> Nginx {
        tokio::task::spawn_blocking(move || self.try_start())
            .await
            .expect("the nginx start-up task")
            .unwrap_or_else(|e| panic!("nginx did not start: {e:#}"))
    }

    /// Like [`NginxBuilder::start`], returning the error; blocks the calling thread (for
    /// synchronous tests and blocking threads).
    pub fn try_start(self) -> anyhow::Result<Nginx> {
        let program = find_program("nginx")?;
        let dir = tempfile::Builder::new()
            .prefix("underpass-nginx-")
            .tempdir()
            .context("create tempdir")?;
        let sha256 = self.write_files(dir.path())?;
        let error_log = dir.path().join("error.log");
        for _attempt in 0..5 {
            let http_addr = SocketAddr::new(self.ip, free_port(self.ip));
            let https_addr =
                (!self.tls_sites.is_empty()).then(|| SocketAddr::new(self.ip, free_port(self.ip)));
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, self.config(dir.path(), http_addr, https_addr))?;
            // A stale log from a previous attempt would read as "address in use" again.
            std::fs::write(&error_log, b"")?;
            let mut command = Command::new(&program);
            command
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&error_log);
            let mut child = ChildGuard::spawn(command, "nginx", dir.path())?;
            let probe = poll_until("nginx", STARTUP_TIMEOUT, || {
                probe_child(
                    &mut child,
                    || read_lossy(&error_log),
                    || tcp_accepts(http_addr) && https_addr.is_none_or(tcp_accepts),
                )
            });
            match probe {
                Ok(Probe::Ready) => {
                    return Ok(Nginx {
                        http_addr,
                        https_addr,
                        sha256,
                        child,
                        dir,
                    })
                }
                Ok(Probe::AddrInUse) => continue,
                Ok(other) => bail!("{other:?}\n{}", child.output()),
                Err(e) => bail!("{e}\n{}\n{}", read_lossy(&error_log), child.output()),
            }
        }
        bail!("address in use on {} five times in a row", self.ip)
    }

    fn write_files(&self, dir: &Path) -> anyhow::Result<HashMap<String, String>> {
        for sub in ["www", "tls", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut sha256 = HashMap::new();
        for (i, location) in self.locations.iter().enumerate() {
            match &location.kind {
                LocationKind::File { path, content, .. } => {
                    std::fs::write(dir.join("www").join(i.to_string()), content)?;
                    sha256.insert(path.clone(), sha256_hex(content));
                }
                LocationKind::Pattern { path, len } => {
                    write_pattern(&dir.join("www").join(i.to_string()), *len)?;
                    sha256.insert(path.clone(), pattern::sha256_hex(*len));
                }
                _ => {}
            }
        }
        for (i, site) in self.tls_sites.iter().enumerate() {
            std::fs::write(dir.join("tls").join(format!("{i}.crt")), &site.chain_pem)?;
            std::fs::write(dir.join("tls").join(format!("{i}.key")), &site.key_pem)?;
        }
        Ok(sha256)
    }

    fn config(&self, dir: &Path, http: SocketAddr, https: Option<SocketAddr>) -> String {
        let d = dir.display();
        let mut c = String::new();
        // `write!` to a String cannot fail.
        let _ = write!(
            c,
            "master_process off;\ndaemon off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nevents {{ worker_connections 1024; }}\n\
             http {{\n\
             types {{ application/json json; text/plain txt; text/html html; }}\n\
             default_type application/octet-stream;\n\
             log_format underpass escape=json {LOG_FORMAT};\n\
             access_log {d}/access.log underpass;\n\
             client_body_temp_path {d}/tmp/body;\nproxy_temp_path {d}/tmp/proxy;\n\
             client_max_body_size 0;\nkeepalive_requests 100000;\nsendfile on;\n\
             geo $underpass_dollar {{ default \"$\"; }}\n"
        );
        for snippet in &self.http_snippets {
            let _ = writeln!(c, "{snippet}");
        }
        let _ = writeln!(
            c,
            "server {{\nlisten {http} default_server;\nserver_name _;\n{}{}}}",
            self.server_body(dir, http),
            self.sink_targets()
        );
        if let Some(https) = https {
            let h2 = if self.http2 { " http2" } else { "" };
            for (i, site) in self.tls_sites.iter().enumerate() {
                let default = if i == 0 { " default_server" } else { "" };
                let _ = writeln!(
                    c,
                    "server {{\nlisten {https} ssl{h2}{default};\nserver_name {};\n\
                     ssl_certificate {d}/tls/{i}.crt;\nssl_certificate_key {d}/tls/{i}.key;\n\
                     ssl_protocols TLSv1.2 TLSv1.3;\n{}}}",
                    site.name,
                    self.server_body(dir, http)
                );
            }
        }
        c.push_str("}\n");
        c
    }

    /// Directives and locations shared by every server block.
    fn server_body(&self, dir: &Path, http: SocketAddr) -> String {
        let www = dir.join("www");
        let mut c = String::from("add_header X-Underpass-Server \"$server_name\" always;\n");
        for snippet in &self.server_snippets {
            let _ = writeln!(c, "{snippet}");
        }
        for (i, location) in self.locations.iter().enumerate() {
            let file = www.join(i.to_string());
            let file = file.display();
            let _ = match &location.kind {
                LocationKind::File {
                    path, content_type, ..
                } => writeln!(
                    c,
                    "location = {path} {{ default_type {content_type}; alias {file}; }}"
                ),
                LocationKind::Pattern { path, .. } => writeln!(
                    c,
                    "location = {path} {{ default_type application/octet-stream; alias {file}; }}"
                ),
                LocationKind::Details { prefix } => writeln!(
                    c,
                    "location {prefix} {{ default_type application/json; return 200 \"{}\"; }}",
                    DETAILS.replace('"', "\\\"")
                ),
                LocationKind::Status {
                    path,
                    status,
                    content_type,
                    body,
                } => writeln!(
                    c,
                    "location = {path} {{ default_type {content_type}; return {status} \"{}\"; }}",
                    quote(body)
                ),
                LocationKind::BodySink { path, .. } => writeln!(
                    c,
                    "location = {path} {{ client_body_buffer_size 16m; client_max_body_size 16m; \
                     proxy_http_version 1.1; proxy_set_header Connection \"\"; \
                     proxy_pass http://{http}/__underpass_sink/{i}; }}"
                ),
                LocationKind::Raw { matcher, block } => {
                    writeln!(c, "location {matcher} {{\n{block}\n}}")
                }
            };
        }
        c
    }

    /// The internal locations behind [`Location::body_sink`] (on the plain HTTP server).
    fn sink_targets(&self) -> String {
        let mut c = String::new();
        for (i, location) in self.locations.iter().enumerate() {
            if let LocationKind::BodySink { status, body, .. } = &location.kind {
                let _ = writeln!(
                    c,
                    "location = /__underpass_sink/{i} {{ access_log off; \
                     default_type application/json; return {status} \"{}\"; }}",
                    quote(body)
                );
            }
        }
        c
    }
}

/// Escapes `text` for a double-quoted nginx string: `\` and `"` escaped, `$` through a
/// variable that holds a dollar sign.
fn quote(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('$', "${underpass_dollar}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn write_pattern(path: &Path, len: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        pattern::fill(offset, &mut buf[..n]);
        file.write_all(&buf[..n])?;
        offset += n as u64;
    }
    file.flush()?;
    Ok(())
}
