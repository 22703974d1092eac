//! The request and response JSON of the directory admin API, and its strict validation.
//!
//! Pure code: no I/O. A handler reads a body with [`parse_body`] (JSON syntax, unknown and
//! mistyped fields), checks it with one of the `validate_*` functions (every rule, all errors
//! at once) and gets a typed, normalized spec; `*_json` and the `envelope_*` functions build
//! what it answers. The shapes follow the directory the Workers tooling already speaks, so
//! bodies written for it (and its Terraform and wrangler habits) work here unchanged.
//!
//! Specs serialize back to exactly the public JSON shape (defaults written out, absent
//! optionals omitted, ids in UUID form) and deserialize through the same validation, so a
//! spec stored as JSON reads back as the same spec.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::error::Category;
use serde_json::{json, Map, Value};

use crate::model::utc_date;

/// Error codes of the envelope's `errors[].code`:
///
/// | code | meaning                                                        | HTTP status |
/// |------|----------------------------------------------------------------|-------------|
/// | 1001 | the request body is invalid: one error per problem, in `field` | 400         |
/// | 1002 | no API token, or not a valid one                               | 401         |
/// | 1003 | the token's role does not allow this request                   | 403         |
/// | 1004 | no such object                                                 | 404         |
/// | 1005 | a conflict: the name is already taken, or the object is in use | 409         |
/// | 1006 | an internal error                                              | 500         |
///
/// 1001 covers every problem [`parse_body`] and the `validate_*` functions find: an empty or
/// malformed body, an unknown or mistyped field, a value that breaks a rule.
pub(crate) const CODE_INVALID_BODY: u32 = 1001;
/// No API token, or not a valid one (401). See [`CODE_INVALID_BODY`] for the table.
pub(crate) const CODE_UNAUTHENTICATED: u32 = 1002;
/// The token's role does not allow this request (403).
pub(crate) const CODE_FORBIDDEN: u32 = 1003;
/// No such object (404).
pub(crate) const CODE_NOT_FOUND: u32 = 1004;
/// The name is already taken, or the object is still in use (409).
pub(crate) const CODE_CONFLICT: u32 = 1005;
/// An internal error (500).
pub(crate) const CODE_INTERNAL: u32 = 1006;

/// The longest name of a tunnel, network, service, binding or token, in characters.
const MAX_NAME: usize = 64;
/// The most DNS servers a hostname service may name.
const MAX_RESOLVER_IPS: usize = 8;
/// The longest `app_protocol` hint.
const MAX_APP_PROTOCOL: usize = 32;

/// The message of a binding with zero or several targets.
const ONE_TARGET: &str = "a binding serves exactly one of service_id, network_id or tunnel_id";
/// The message of a malformed id.
const BAD_ID: &str = "must be a UUID (like 123e4567-e89b-12d3-a456-426614174000) or 32 hex digits";

// ---------------------------------------------------------------------------------------------
// Ids and times

/// An id in the lowercase UUID form `8-4-4-4-12`.
pub(crate) fn format_id(bytes: &[u8; 16]) -> String {
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// An id written as a UUID (`8-4-4-4-12` hex digits, any case) or as 32 plain hex digits (the
/// form tunnel ids have elsewhere in the edge). Nothing else: no braces, no whitespace.
pub(crate) fn parse_id(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    let mut digits = [0u8; 32];
    match bytes.len() {
        32 => digits.copy_from_slice(bytes),
        36 => {
            let mut next = 0;
            for (at, &byte) in bytes.iter().enumerate() {
                if matches!(at, 8 | 13 | 18 | 23) {
                    if byte != b'-' {
                        return None;
                    }
                } else {
                    // 32 of the 36 positions are not hyphen positions; a stray `-` among them
                    // is caught by the hex decoding below.
                    digits[next] = byte;
                    next += 1;
                }
            }
        }
        _ => return None,
    }
    let mut id = [0u8; 16];
    hex::decode_to_slice(digits, &mut id).ok()?;
    Some(id)
}

/// Seconds since the Unix epoch as an RFC 3339 UTC time, `2026-12-03T10:00:00Z`.
pub(crate) fn rfc3339(secs: u64) -> String {
    let mut text = utc_date(secs).replacen(' ', "T", 1);
    text.push('Z');
    text
}

// ---------------------------------------------------------------------------------------------
// Errors and parsing

/// One problem with a request body, naming the field by its JSON path (`host.ipv4`,
/// `http_port`, `name`; `""` for the whole body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FieldError {
    /// The JSON path of the field (`host.resolver_network.resolver_ips[2]`), `""` for the body.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Parse a request body as JSON into `T`, which must be written as a JSON object. Names the
/// path of an unknown or mistyped field (`host.network.tunnel_id`); syntax errors and an
/// empty body are errors of the whole body (field `""`).
pub(crate) fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FieldError> {
    if bytes.trim_ascii().is_empty() {
        return Err(FieldError::new("", "the request needs a JSON body"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let Object(value) = serde_path_to_error::deserialize::<_, Object<T>>(&mut deserializer)
        .map_err(|error| {
            let path = error.path().to_string();
            body_error(&path, error.inner())
        })?;
    deserializer
        .end()
        .map_err(|error| body_error(".", &error))?;
    Ok(value)
}

/// A [`FieldError`] for a JSON error at `path` (serde_path_to_error's form, `.` for the root).
fn body_error(path: &str, error: &serde_json::Error) -> FieldError {
    match error.classify() {
        Category::Data => {
            let field = if path == "." { "" } else { path };
            // The position is noise for a mistyped field: the path already names it.
            let text = error.to_string();
            let position = format!(" at line {} column {}", error.line(), error.column());
            let message = text.strip_suffix(&position).unwrap_or(&text);
            FieldError::new(field, message)
        }
        Category::Syntax | Category::Eof | Category::Io => {
            FieldError::new("", format!("the request body is not valid JSON: {error}"))
        }
    }
}

/// A `T` that must be written as a JSON object: serde's derived structs also accept an array of
/// their field values in order, which a strict API should not.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectVisitor(PhantomData))
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = Object<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
        // The same map access goes on, so serde_path_to_error keeps tracking the path inside.
        T::deserialize(MapAccessDeserializer::new(map)).map(Object)
    }
}

/// `deserialize_with` for an optional nested object (see [`Object`]); `null` is absent.
fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Object<T>>::deserialize(deserializer)?.map(|Object(value)| value))
}

/// The errors found so far in one body.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// `value` if no error was found. Every check that yields no value records why, so `None`
    /// without an error would be a bug here; it still answers with an error, not a panic.
    fn finish<T>(self, value: Option<T>) -> Result<T, Vec<FieldError>> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            None if self.0.is_empty() => Err(vec![FieldError::new("", "the body is invalid")]),
            _ => Err(self.0),
        }
    }

    /// A required field: records `is required` when absent.
    fn required<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.push(field, "is required");
        }
        value
    }

    /// A field not allowed here: records why when present.
    fn not_allowed<T>(&mut self, field: &str, value: &Option<T>, why: &str) {
        if value.is_some() {
            self.push(field, why);
        }
    }
}

/// Joins the errors of a stored spec that no longer validates, for a serde error.
fn joined(errors: Vec<FieldError>) -> String {
    let texts: Vec<String> = errors.iter().map(FieldError::to_string).collect();
    texts.join("; ")
}

// ---------------------------------------------------------------------------------------------
// Field rules

/// A tunnel, network or service name: 1..=64 of `[A-Za-z0-9_.-]`, starting alphanumeric.
fn check_name(errors: &mut Errors, field: &str, name: String) -> Option<String> {
    let problem = if name.is_empty() {
        Some("must not be empty")
    } else if name.chars().count() > MAX_NAME {
        Some("must be at most 64 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("may contain only letters, digits, `_`, `.` and `-`")
    } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
        Some("must start with a letter or a digit")
    } else {
        None
    };
    match problem {
        Some(problem) => {
            errors.push(field, problem);
            None
        }
        None => Some(name),
    }
}

/// A binding name, shaped like a JavaScript identifier as Worker binding names are: 1..=64 of
/// `[A-Za-z0-9_]`, starting with a letter or `_`.
fn check_binding_name(errors: &mut Errors, name: String) -> Option<String> {
    let problem = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_NAME {
        Some("must be at most 64 characters")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Some("may contain only letters, digits and `_`")
    } else if name.as_bytes()[0].is_ascii_digit() {
        Some("must start with a letter or `_`")
    } else {
        None
    };
    match problem {
        Some(problem) => {
            errors.push("name", problem);
            None
        }
        None => Some(name),
    }
}

/// An id field (see [`parse_id`]).
fn check_id(errors: &mut Errors, field: &str, text: &str) -> Option<[u8; 16]> {
    let id = parse_id(text);
    if id.is_none() {
        errors.push(field, BAD_ID);
    }
    id
}

/// A port field: an integer 1..=65535. Read as any JSON value so that a string, a fraction or
/// a number out of range gets a message naming the field.
fn check_port(errors: &mut Errors, field: &str, value: &Value) -> Option<u16> {
    let port = value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&port| port != 0);
    if port.is_none() {
        let message = match value {
            Value::Number(n) => format!("must be an integer from 1 to 65535, not {n}"),
            Value::String(_) => "must be a number from 1 to 65535, not a string".to_owned(),
            _ => "must be an integer from 1 to 65535".to_owned(),
        };
        errors.push(field, message);
    }
    port
}

/// An IPv4 address in its canonical dotted form (no leading zeros, no short or hex forms).
fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    text.parse::<Ipv4Addr>()
        .ok()
        .filter(|ip| ip.to_string() == text)
}

/// An IP address without a port or zone; IPv4 in its canonical dotted form.
fn parse_ip(text: &str) -> Option<IpAddr> {
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => parse_ipv4(text).map(IpAddr::V4),
        ip @ IpAddr::V6(_) => Some(ip),
    }
}

/// Whether `text` is (or tries to be) an IP literal: v4, v6, bracketed v6, any with a port.
fn is_ip_literal(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.parse::<IpAddr>().is_ok() || text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner.split_once(']').map_or(inner, |(ip, _)| ip);
        return inner
            .split('%')
            .next()
            .unwrap_or(inner)
            .parse::<Ipv6Addr>()
            .is_ok();
    }
    // Two colons or more: an IPv6 address of some kind (with a zone id, say), never a name.
    text.matches(':').count() >= 2
}

/// A hostname, lowercased and without its trailing dot, or what is wrong with it.
fn check_hostname(text: &str) -> Result<String, &'static str> {
    if text.is_empty() {
        return Err("hostname must not be empty");
    }
    if text.contains("://") {
        return Err("hostname must not contain a scheme (like https://)");
    }
    if text.chars().any(char::is_whitespace) {
        return Err("hostname must not contain whitespace");
    }
    if text.contains('/') {
        return Err("hostname must not contain a path");
    }
    if is_ip_literal(text) {
        return Err("hostname must not be an IP literal; use host.ipv4 or host.ipv6");
    }
    if text.contains(':') {
        return Err("hostname must not contain a port");
    }
    // One trailing dot (a fully qualified name) is allowed and does not count in the length.
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() {
        return Err("hostname must have at least one label");
    }
    if name.len() > 253 {
        return Err("hostname must be at most 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("hostname must not have an empty label (`..` or a leading `.`)");
        }
        if label.len() > 63 {
            return Err("hostname labels must be at most 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("hostname labels may contain only letters, digits and `-` \
                        (write an international name in its xn-- form)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("hostname labels must not start or end with `-`");
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// An `app_protocol` hint: 1..=32 of `[a-z0-9_-]`.
fn check_app_protocol(errors: &mut Errors, text: String) -> Option<String> {
    let valid = !text.is_empty()
        && text.len() <= MAX_APP_PROTOCOL
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if valid {
        Some(text)
    } else {
        errors.push(
            "app_protocol",
            "must be 1 to 32 of lowercase letters, digits, `_` and `-` (like postgresql)",
        );
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Services

/// The body of `POST` and `PUT .../services`: a VPC Service as written (see
/// [`validate_service`] for the rules). Also the JSON form a [`ServiceSpec`] serializes to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServiceBody {
    /// Its name, unique in the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// `http` or `tcp`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// Where the service is.
    #[serde(
        deserialize_with = "optional_object",
        skip_serializing_if = "Option::is_none"
    )]
    host: Option<HostBody>,
    /// Port for plain HTTP (type http).
    #[serde(skip_serializing_if = "Option::is_none")]
    http_port: Option<Value>,
    /// Port for HTTPS (type http).
    #[serde(skip_serializing_if = "Option::is_none")]
    https_port: Option<Value>,
    /// The port (type tcp).
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_port: Option<Value>,
    /// What a TCP service speaks, a hint (`postgresql`).
    #[serde(skip_serializing_if = "Option::is_none")]
    app_protocol: Option<String>,
    /// How an HTTPS origin's certificate is checked.
    #[serde(
        deserialize_with = "optional_object",
        skip_serializing_if = "Option::is_none"
    )]
    tls_settings: Option<TlsSettingsBody>,
}

/// `host` of a service body: IP addresses with a `network`, or a hostname with a
/// `resolver_network`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HostBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv4: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    #[serde(
        deserialize_with = "optional_object",
        skip_serializing_if = "Option::is_none"
    )]
    network: Option<NetworkRefBody>,
    #[serde(
        deserialize_with = "optional_object",
        skip_serializing_if = "Option::is_none"
    )]
    resolver_network: Option<ResolverNetworkBody>,
}

/// `host.network`: the tunnel an IP host is reached through.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NetworkRefBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_id: Option<String>,
}

/// `host.resolver_network`: the tunnel a hostname is resolved and reached through, and the DNS
/// servers inside it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ResolverNetworkBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolver_ips: Option<Vec<String>>,
}

/// `tls_settings` of a service body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TlsSettingsBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_verification_mode: Option<String>,
}

/// A validated VPC Service, defaults filled in. Serializes to the public JSON shape (what the
/// API returns, and what is stored) and deserializes through [`validate_service`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "ServiceBody", try_from = "ServiceBody")]
pub(crate) struct ServiceSpec {
    /// Its name: 1..=64 of `[A-Za-z0-9_.-]`, starting alphanumeric.
    pub name: String,
    /// HTTP or TCP.
    pub kind: ServiceKind,
    /// Where it is.
    pub host: HostSpec,
    /// Port for plain HTTP: always set for an HTTP service (80 by default), never for TCP.
    pub http_port: Option<u16>,
    /// Port for HTTPS: always set for an HTTP service (443 by default), never for TCP.
    pub https_port: Option<u16>,
    /// The port of a TCP service; never set for HTTP.
    pub tcp_port: Option<u16>,
    /// What a TCP service speaks, a hint (`postgresql`); never set for HTTP.
    pub app_protocol: Option<String>,
    /// How an HTTPS origin's certificate is checked.
    pub cert_verification_mode: CertMode,
}

/// What a service carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServiceKind {
    /// HTTP and HTTPS (`fetch()` and `connect()`).
    Http,
    /// Plain TCP (`connect()` only).
    Tcp,
}

impl ServiceKind {
    /// Its name in JSON: `http` or `tcp`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Http => "http",
            ServiceKind::Tcp => "tcp",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "http" => Some(ServiceKind::Http),
            "tcp" => Some(ServiceKind::Tcp),
            _ => None,
        }
    }
}

/// Where a service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostSpec {
    /// IP addresses reached through a tunnel: at least one of the two is set (both: dual
    /// stack).
    Ip {
        /// Its IPv4 address.
        ipv4: Option<Ipv4Addr>,
        /// Its IPv6 address.
        ipv6: Option<Ipv6Addr>,
        /// The tunnel (`host.network.tunnel_id`).
        tunnel_id: [u8; 16],
    },
    /// A hostname the tunnel's connectors resolve.
    Hostname {
        /// The name, lowercased, without a trailing dot.
        hostname: String,
        /// The tunnel (`host.resolver_network.tunnel_id`).
        tunnel_id: [u8; 16],
        /// DNS servers inside the private network (port 53); empty: the connector's own.
        resolver_ips: Vec<IpAddr>,
    },
}

impl HostSpec {
    /// The tunnel the host is reached through.
    pub(crate) fn tunnel_id(&self) -> &[u8; 16] {
        match self {
            HostSpec::Ip { tunnel_id, .. } | HostSpec::Hostname { tunnel_id, .. } => tunnel_id,
        }
    }
}

/// How an HTTPS origin's certificate is checked (`tls_settings.cert_verification_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum CertMode {
    /// Chain and hostname (`verify_full`, the default).
    #[default]
    VerifyFull,
    /// Chain only (`verify_ca`).
    VerifyCa,
    /// No check (`disabled`).
    Disabled,
}

impl CertMode {
    /// Its name in JSON.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CertMode::VerifyFull => "verify_full",
            CertMode::VerifyCa => "verify_ca",
            CertMode::Disabled => "disabled",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "verify_full" => Some(CertMode::VerifyFull),
            "verify_ca" => Some(CertMode::VerifyCa),
            "disabled" => Some(CertMode::Disabled),
            _ => None,
        }
    }
}

/// Check a service body against every rule, collecting all the errors:
///
/// - `name` (required): 1..=64 of `[A-Za-z0-9_.-]`, starting with a letter or digit;
/// - `type` (required): `http` or `tcp`;
/// - `host` (required): `{ipv4, network}`, `{ipv6, network}`, `{ipv4, ipv6, network}` or
///   `{hostname, resolver_network: {tunnel_id, resolver_ips?}}`, with `network: {tunnel_id}`;
/// - ports are integers 1..=65535; type http takes `http_port` (default 80) and `https_port`
///   (default 443); type tcp takes `tcp_port` (required) and `app_protocol` (optional, 1..=32
///   of `[a-z0-9_-]`);
/// - `tls_settings.cert_verification_mode`: `verify_full` (default), `verify_ca`, `disabled`.
pub(crate) fn validate_service(body: ServiceBody) -> Result<ServiceSpec, Vec<FieldError>> {
    let mut errors = Errors::default();
    let name = errors
        .required("name", body.name)
        .and_then(|name| check_name(&mut errors, "name", name));
    let kind = errors.required("type", body.kind).and_then(|kind| {
        let parsed = ServiceKind::parse(&kind);
        if parsed.is_none() {
            errors.push("type", "must be \"http\" or \"tcp\"");
        }
        parsed
    });
    let host = errors
        .required("host", body.host)
        .and_then(|host| check_host(&mut errors, host));

    // Outer `None`: absent; inner `None`: present but invalid (the error is recorded).
    let http_port = body
        .http_port
        .map(|v| check_port(&mut errors, "http_port", &v));
    let https_port = body
        .https_port
        .map(|v| check_port(&mut errors, "https_port", &v));
    let tcp_port = body
        .tcp_port
        .map(|v| check_port(&mut errors, "tcp_port", &v));
    let app_protocol = body
        .app_protocol
        .map(|p| check_app_protocol(&mut errors, p));
    let ports = match kind {
        Some(ServiceKind::Http) => {
            errors.not_allowed("tcp_port", &tcp_port, "is only for type tcp");
            errors.not_allowed("app_protocol", &app_protocol, "is only for type tcp");
            match (
                http_port.unwrap_or(Some(80)),
                https_port.unwrap_or(Some(443)),
            ) {
                (Some(http), Some(https)) => Some((Some(http), Some(https), None, None)),
                _ => None,
            }
        }
        Some(ServiceKind::Tcp) => {
            errors.not_allowed("http_port", &http_port, "is only for type http");
            errors.not_allowed("https_port", &https_port, "is only for type http");
            let tcp = match tcp_port {
                None => {
                    errors.push("tcp_port", "is required for type tcp");
                    None
                }
                Some(port) => port,
            };
            match (tcp, app_protocol) {
                (Some(tcp), None) => Some((None, None, Some(tcp), None)),
                (Some(tcp), Some(Some(protocol))) => Some((None, None, Some(tcp), Some(protocol))),
                _ => None,
            }
        }
        None => None,
    };

    let mode = match body.tls_settings.and_then(|tls| tls.cert_verification_mode) {
        None => Some(CertMode::VerifyFull),
        Some(text) => {
            let mode = CertMode::parse(&text);
            if mode.is_none() {
                errors.push(
                    "tls_settings.cert_verification_mode",
                    "must be \"verify_full\", \"verify_ca\" or \"disabled\"",
                );
            }
            mode
        }
    };

    let spec = match (name, kind, host, ports, mode) {
        (
            Some(name),
            Some(kind),
            Some(host),
            Some((http_port, https_port, tcp_port, app_protocol)),
            Some(cert_verification_mode),
        ) => Some(ServiceSpec {
            name,
            kind,
            host,
            http_port,
            https_port,
            tcp_port,
            app_protocol,
            cert_verification_mode,
        }),
        _ => None,
    };
    errors.finish(spec)
}

/// Check `host`: its shape, then each value. Records every problem.
fn check_host(errors: &mut Errors, host: HostBody) -> Option<HostSpec> {
    let ipv4 = host.ipv4.map(|text| {
        let ip = parse_ipv4(&text);
        if ip.is_none() {
            errors.push(
                "host.ipv4",
                "must be an IPv4 address in dotted decimal form, like 10.0.1.50",
            );
        }
        ip
    });
    let ipv6 = host.ipv6.map(|text| {
        let ip = text.parse::<Ipv6Addr>().ok();
        if text.contains('%') {
            errors.push("host.ipv6", "must not have a zone id (`%`)");
        } else if ip.is_none() {
            errors.push("host.ipv6", "must be an IPv6 address, like fd00::50");
        }
        ip
    });
    let hostname = host.hostname.map(|text| {
        let checked = check_hostname(&text);
        if let Err(problem) = checked {
            errors.push("host.hostname", problem);
        }
        checked.ok()
    });
    let network = host.network.map(|network| {
        errors
            .required("host.network.tunnel_id", network.tunnel_id)
            .and_then(|id| check_id(errors, "host.network.tunnel_id", &id))
    });
    let resolver = host.resolver_network.map(|resolver| {
        let field = "host.resolver_network.tunnel_id";
        let tunnel_id = errors
            .required(field, resolver.tunnel_id)
            .and_then(|id| check_id(errors, field, &id));
        let ips = match resolver.resolver_ips {
            None => Some(Vec::new()),
            Some(texts) => check_resolver_ips(errors, texts),
        };
        tunnel_id.zip(ips)
    });

    let is_ip = ipv4.is_some() || ipv6.is_some();
    match (is_ip, hostname) {
        (true, Some(_)) => {
            errors.push(
                "host",
                "takes ipv4 and/or ipv6 with network, or hostname with resolver_network, not both",
            );
            None
        }
        (false, None) => {
            errors.push("host", "needs ipv4, ipv6 or hostname");
            None
        }
        (true, None) => {
            errors.not_allowed(
                "host.resolver_network",
                &resolver,
                "is only for a hostname host; an ipv4 or ipv6 host uses network",
            );
            let network = errors.required("host.network", network);
            let spec = match (ipv4, ipv6, network) {
                (Some(None), _, _) | (_, Some(None), _) => None,
                (ipv4, ipv6, Some(Some(tunnel_id))) => Some(HostSpec::Ip {
                    ipv4: ipv4.flatten(),
                    ipv6: ipv6.flatten(),
                    tunnel_id,
                }),
                (_, _, _) => None,
            };
            if resolver.is_some() {
                None
            } else {
                spec
            }
        }
        (false, Some(hostname)) => {
            errors.not_allowed(
                "host.network",
                &network,
                "is only for an ipv4 or ipv6 host; a hostname host uses resolver_network",
            );
            let resolver = errors.required("host.resolver_network", resolver);
            match (hostname, resolver, network) {
                (Some(hostname), Some(Some((tunnel_id, resolver_ips))), None) => {
                    Some(HostSpec::Hostname {
                        hostname,
                        tunnel_id,
                        resolver_ips,
                    })
                }
                _ => None,
            }
        }
    }
}

/// `host.resolver_network.resolver_ips` when present: 1..=8 plain IP addresses.
fn check_resolver_ips(errors: &mut Errors, texts: Vec<String>) -> Option<Vec<IpAddr>> {
    let field = "host.resolver_network.resolver_ips";
    if texts.is_empty() || texts.len() > MAX_RESOLVER_IPS {
        errors.push(
            field,
            "must list 1 to 8 addresses (leave it out to use the connector's own resolver)",
        );
        return None;
    }
    let mut ips = Vec::with_capacity(texts.len());
    let mut valid = true;
    for (index, text) in texts.iter().enumerate() {
        match parse_ip(text) {
            Some(ip) => ips.push(ip),
            None => {
                valid = false;
                let message = if text.parse::<SocketAddr>().is_ok() {
                    "must be an IP address without a port (DNS servers listen on port 53)"
                } else {
                    "must be an IP address"
                };
                errors.push(format!("{field}[{index}]"), message);
            }
        }
    }
    valid.then_some(ips)
}

impl TryFrom<ServiceBody> for ServiceSpec {
    type Error = String;

    fn try_from(body: ServiceBody) -> Result<Self, String> {
        validate_service(body).map_err(joined)
    }
}

impl From<ServiceSpec> for ServiceBody {
    fn from(spec: ServiceSpec) -> Self {
        let host = match spec.host {
            HostSpec::Ip {
                ipv4,
                ipv6,
                tunnel_id,
            } => HostBody {
                ipv4: ipv4.map(|ip| ip.to_string()),
                ipv6: ipv6.map(|ip| ip.to_string()),
                network: Some(NetworkRefBody {
                    tunnel_id: Some(format_id(&tunnel_id)),
                }),
                ..HostBody::default()
            },
            HostSpec::Hostname {
                hostname,
                tunnel_id,
                resolver_ips,
            } => HostBody {
                hostname: Some(hostname),
                resolver_network: Some(ResolverNetworkBody {
                    tunnel_id: Some(format_id(&tunnel_id)),
                    resolver_ips: (!resolver_ips.is_empty())
                        .then(|| resolver_ips.iter().map(IpAddr::to_string).collect()),
                }),
                ..HostBody::default()
            },
        };
        ServiceBody {
            name: Some(spec.name),
            kind: Some(spec.kind.as_str().to_owned()),
            host: Some(host),
            http_port: spec.http_port.map(Value::from),
            https_port: spec.https_port.map(Value::from),
            tcp_port: spec.tcp_port.map(Value::from),
            app_protocol: spec.app_protocol,
            tls_settings: Some(TlsSettingsBody {
                cert_verification_mode: Some(spec.cert_verification_mode.as_str().to_owned()),
            }),
        }
    }
}

/// A service as the API returns it: `service_id`, the spec's fields, `created_at` and
/// `updated_at` (RFC 3339 UTC; arguments in seconds since the Unix epoch).
pub(crate) fn service_json(
    id: &[u8; 16],
    spec: &ServiceSpec,
    created_at: u64,
    updated_at: u64,
) -> Value {
    resource_json("service_id", id, spec, created_at, updated_at)
}

/// `{id_field: id, ...spec, created_at, updated_at}`.
fn resource_json(
    id_field: &str,
    id: &[u8; 16],
    spec: &impl Serialize,
    created_at: u64,
    updated_at: u64,
) -> Value {
    let mut object = Map::new();
    object.insert(id_field.to_owned(), Value::from(format_id(id)));
    // Invariant: the specs serialize through their bodies, plain structs of strings, numbers
    // and nested structs, which always make a JSON object.
    match serde_json::to_value(spec).expect("a spec serializes to JSON") {
        Value::Object(fields) => object.extend(fields),
        other => unreachable!("a spec serializes to a JSON object, not {other}"),
    }
    object.insert("created_at".to_owned(), Value::from(rfc3339(created_at)));
    object.insert("updated_at".to_owned(), Value::from(rfc3339(updated_at)));
    Value::Object(object)
}

// ---------------------------------------------------------------------------------------------
// Networks

/// The body of `POST` and `PUT .../networks`: a VPC Network as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct NetworkBody {
    /// Its name, unique in the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// The tunnel whose connectors route it; absent or `null`: every tunnel of the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_id: Option<String>,
}

/// A validated VPC Network. Serializes to the public JSON shape (`tunnel_id` omitted when it
/// spans every tunnel) and deserializes through [`validate_network`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "NetworkBody", try_from = "NetworkBody")]
pub(crate) struct NetworkSpec {
    /// Its name: 1..=64 of `[A-Za-z0-9_.-]`, starting alphanumeric.
    pub name: String,
    /// Its tunnel; `None`: every tunnel of the account.
    pub tunnel_id: Option<[u8; 16]>,
}

/// Check a network body: `name` as for services, `tunnel_id` an id if present.
pub(crate) fn validate_network(body: NetworkBody) -> Result<NetworkSpec, Vec<FieldError>> {
    let mut errors = Errors::default();
    let name = errors
        .required("name", body.name)
        .and_then(|name| check_name(&mut errors, "name", name));
    let tunnel_id = body
        .tunnel_id
        .map(|text| check_id(&mut errors, "tunnel_id", &text));
    let spec = match (name, tunnel_id) {
        (Some(name), None) => Some(NetworkSpec {
            name,
            tunnel_id: None,
        }),
        (Some(name), Some(Some(id))) => Some(NetworkSpec {
            name,
            tunnel_id: Some(id),
        }),
        _ => None,
    };
    errors.finish(spec)
}

impl TryFrom<NetworkBody> for NetworkSpec {
    type Error = String;

    fn try_from(body: NetworkBody) -> Result<Self, String> {
        validate_network(body).map_err(joined)
    }
}

impl From<NetworkSpec> for NetworkBody {
    fn from(spec: NetworkSpec) -> Self {
        NetworkBody {
            name: Some(spec.name),
            tunnel_id: spec.tunnel_id.as_ref().map(format_id),
        }
    }
}

/// A network as the API returns it: `network_id`, the spec's fields, `created_at`,
/// `updated_at`.
pub(crate) fn network_json(
    id: &[u8; 16],
    spec: &NetworkSpec,
    created_at: u64,
    updated_at: u64,
) -> Value {
    resource_json("network_id", id, spec, created_at, updated_at)
}

// ---------------------------------------------------------------------------------------------
// Bindings

/// The body of `POST` and `PUT .../bindings`: a binding as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct BindingBody {
    /// Its name, as a Worker sees it (`MY_BINDING`).
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// The VPC Service it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    service_id: Option<String>,
    /// The VPC Network it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    network_id: Option<String>,
    /// The tunnel whose whole network it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_id: Option<String>,
    /// The address its listener binds, `ip:port` (default `127.0.0.1:0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// `proxy` (default) or `tcp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
}

/// A validated binding. Serializes to the public JSON shape (defaults written out) and
/// deserializes through [`validate_binding`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "BindingBody", try_from = "BindingBody")]
pub(crate) struct BindingSpec {
    /// Its name: 1..=64 of `[A-Za-z0-9_]`, starting with a letter or `_`.
    pub name: String,
    /// What it serves.
    pub target: BindingTargetSpec,
    /// The address its listener binds; port 0: any free port.
    pub listen: SocketAddr,
    /// What the listener speaks.
    pub mode: BindingModeSpec,
}

/// What a binding serves: exactly one of a service, a network or a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindingTargetSpec {
    /// A VPC Service (`service_id`).
    Service([u8; 16]),
    /// A VPC Network (`network_id`).
    Network([u8; 16]),
    /// Every destination of a tunnel (`tunnel_id`).
    Tunnel([u8; 16]),
}

/// What a binding's listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum BindingModeSpec {
    /// An HTTP/1.1 forward proxy (`proxy`, the default).
    #[default]
    Proxy,
    /// A plain TCP port piped to a TCP service (`tcp`; only with a service).
    Tcp,
}

impl BindingModeSpec {
    /// Its name in JSON.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BindingModeSpec::Proxy => "proxy",
            BindingModeSpec::Tcp => "tcp",
        }
    }
}

/// Check a binding body, collecting all the errors: `name` (required) a JS identifier of
/// 1..=64 characters; exactly one of `service_id`, `network_id`, `tunnel_id`; `listen` an
/// `ip:port` (default `127.0.0.1:0`); `mode` `proxy` (default) or `tcp`, which needs
/// `service_id`.
pub(crate) fn validate_binding(body: BindingBody) -> Result<BindingSpec, Vec<FieldError>> {
    let mut errors = Errors::default();
    let name = errors
        .required("name", body.name)
        .and_then(|name| check_binding_name(&mut errors, name));

    let has_service = body.service_id.is_some();
    // Outer `None`: absent; inner `None`: present but not an id (the error is recorded).
    let service = body
        .service_id
        .map(|text| check_id(&mut errors, "service_id", &text).map(BindingTargetSpec::Service));
    let network = body
        .network_id
        .map(|text| check_id(&mut errors, "network_id", &text).map(BindingTargetSpec::Network));
    let tunnel = body
        .tunnel_id
        .map(|text| check_id(&mut errors, "tunnel_id", &text).map(BindingTargetSpec::Tunnel));
    let present: Vec<(&str, Option<BindingTargetSpec>)> = [
        ("service_id", service),
        ("network_id", network),
        ("tunnel_id", tunnel),
    ]
    .into_iter()
    .filter_map(|(field, target)| Some((field, target?)))
    .collect();
    for (field, _) in present.iter().skip(1) {
        errors.push(*field, ONE_TARGET);
    }
    let target = match present.as_slice() {
        [] => {
            errors.push("", ONE_TARGET);
            None
        }
        [(_, target)] => *target,
        _ => None,
    };

    let listen = match body.listen {
        None => Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
        Some(text) => {
            let listen = text.parse::<SocketAddr>().ok();
            if listen.is_none() {
                errors.push(
                    "listen",
                    "must be an IP address and a port, like 127.0.0.1:8080 or [::1]:0",
                );
            }
            listen
        }
    };

    let mode = match body.mode.as_deref() {
        None | Some("proxy") => Some(BindingModeSpec::Proxy),
        Some("tcp") => {
            if !has_service {
                errors.push(
                    "mode",
                    "mode tcp needs service_id: a TCP binding pipes to one TCP service",
                );
            }
            Some(BindingModeSpec::Tcp)
        }
        Some(_) => {
            errors.push("mode", "must be \"proxy\" or \"tcp\"");
            None
        }
    };

    let spec = match (name, target, listen, mode) {
        (Some(name), Some(target), Some(listen), Some(mode)) => Some(BindingSpec {
            name,
            target,
            listen,
            mode,
        }),
        _ => None,
    };
    errors.finish(spec)
}

impl TryFrom<BindingBody> for BindingSpec {
    type Error = String;

    fn try_from(body: BindingBody) -> Result<Self, String> {
        validate_binding(body).map_err(joined)
    }
}

impl From<BindingSpec> for BindingBody {
    fn from(spec: BindingSpec) -> Self {
        let mut body = BindingBody {
            name: Some(spec.name),
            listen: Some(spec.listen.to_string()),
            mode: Some(spec.mode.as_str().to_owned()),
            ..BindingBody::default()
        };
        match spec.target {
            BindingTargetSpec::Service(id) => body.service_id = Some(format_id(&id)),
            BindingTargetSpec::Network(id) => body.network_id = Some(format_id(&id)),
            BindingTargetSpec::Tunnel(id) => body.tunnel_id = Some(format_id(&id)),
        }
        body
    }
}

/// A binding as the API returns it: `binding_id`, the spec's fields, `created_at`,
/// `updated_at`.
pub(crate) fn binding_json(
    id: &[u8; 16],
    spec: &BindingSpec,
    created_at: u64,
    updated_at: u64,
) -> Value {
    resource_json("binding_id", id, spec, created_at, updated_at)
}

// ---------------------------------------------------------------------------------------------
// Tunnels and tokens

/// The body of `POST .../tunnels`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TunnelBody {
    /// Its name, unique in the account.
    name: Option<String>,
}

/// Check a tunnel body; the valid name (1..=64 of `[A-Za-z0-9_.-]`, starting alphanumeric).
pub(crate) fn validate_tunnel_name(body: TunnelBody) -> Result<String, Vec<FieldError>> {
    let mut errors = Errors::default();
    let name = errors
        .required("name", body.name)
        .and_then(|name| check_name(&mut errors, "name", name));
    errors.finish(name)
}

/// The body of `POST .../tokens`: a new API token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TokenBody {
    /// A name for people: 1..=64 characters, no control characters.
    name: Option<String>,
    /// `read`, `bind` or `admin`.
    role: Option<String>,
}

/// A validated token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenSpec {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// What an API token may do. Ordered by privilege: each role can do everything the ones before
/// it can, so `role >= Role::Bind` asks "may it bind?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// List and view services, networks and tunnels; never a secret.
    Read,
    /// Read, and bind a Worker to a service, or to a network by network id.
    Bind,
    /// Everything: create, update and delete, and bind straight to a tunnel id.
    Admin,
}

impl Role {
    /// Its name in JSON: `read`, `bind` or `admin`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Bind => "bind",
            Role::Admin => "admin",
        }
    }
}

/// A role name that is not `read`, `bind` or `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a role is \"read\", \"bind\" or \"admin\"")]
pub(crate) struct UnknownRole;

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Self, UnknownRole> {
        match text {
            "read" => Ok(Role::Read),
            "bind" => Ok(Role::Bind),
            "admin" => Ok(Role::Admin),
            _ => Err(UnknownRole),
        }
    }
}

/// Check a token body: `name` 1..=64 characters without control characters, `role` one of
/// `read`, `bind`, `admin`; both required.
pub(crate) fn validate_token(body: TokenBody) -> Result<TokenSpec, Vec<FieldError>> {
    let mut errors = Errors::default();
    let name = errors.required("name", body.name).and_then(|name| {
        let problem = if name.is_empty() {
            Some("must not be empty")
        } else if name.chars().count() > MAX_NAME {
            Some("must be at most 64 characters")
        } else if name.chars().any(char::is_control) {
            Some("must not contain control characters")
        } else {
            None
        };
        match problem {
            Some(problem) => {
                errors.push("name", problem);
                None
            }
            None => Some(name),
        }
    });
    let role = errors.required("role", body.role).and_then(|role| {
        let parsed = role.parse::<Role>();
        if parsed.is_err() {
            errors.push("role", "must be \"read\", \"bind\" or \"admin\"");
        }
        parsed.ok()
    });
    let spec = match (name, role) {
        (Some(name), Some(role)) => Some(TokenSpec { name, role }),
        _ => None,
    };
    errors.finish(spec)
}

// ---------------------------------------------------------------------------------------------
// Envelopes

/// A success: `{"success": true, "errors": [], "messages": [], "result": result}`.
pub(crate) fn envelope_ok(result: Value) -> Value {
    json!({ "success": true, "errors": [], "messages": [], "result": result })
}

/// A page of a list: [`envelope_ok`] of the items, plus `result_info` with `page`,
/// `per_page`, `count` (items on this page) and `total_count`.
pub(crate) fn envelope_list(items: Vec<Value>, page: u32, per_page: u32, total: usize) -> Value {
    let count = items.len();
    let mut envelope = envelope_ok(Value::Array(items));
    envelope["result_info"] = json!({
        "page": page,
        "per_page": per_page,
        "count": count,
        "total_count": total,
    });
    envelope
}

/// A failure with one error: `{"success": false, "errors": [{"code", "message"}], "messages":
/// [], "result": null}`. Codes: see [`CODE_INVALID_BODY`].
pub(crate) fn envelope_error(code: u32, message: &str) -> Value {
    json!({
        "success": false,
        "errors": [{ "code": code, "message": message }],
        "messages": [],
        "result": null,
    })
}

/// A failure for an invalid body: one error per problem, code [`CODE_INVALID_BODY`], with
/// `message` `"<field>: <message>"` (just the message for the whole body) and `field`.
pub(crate) fn envelope_field_errors(errors: &[FieldError]) -> Value {
    let errors: Vec<Value> = errors
        .iter()
        .map(|error| {
            json!({
                "code": CODE_INVALID_BODY,
                "message": error.to_string(),
                "field": error.field,
            })
        })
        .collect();
    json!({ "success": false, "errors": errors, "messages": [], "result": null })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUNNEL: &str = "0123abcd-4567-89ef-0123-456789abcdef";
    const TUNNEL_BYTES: [u8; 16] = [
        0x01, 0x23, 0xab, 0xcd, 0x45, 0x67, 0x89, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];

    /// Parse and validate a service body given as JSON.
    fn service(body: Value) -> Result<ServiceSpec, Vec<FieldError>> {
        let bytes = serde_json::to_vec(&body).expect("a Value serializes");
        let body = parse_body::<ServiceBody>(&bytes).map_err(|error| vec![error])?;
        validate_service(body)
    }

    /// An HTTP service on an IPv4 host, with `changes` merged in (`null` removes a field).
    fn http(changes: Value) -> Value {
        let mut body = json!({
            "name": "web-server",
            "type": "http",
            "host": { "ipv4": "10.0.1.50", "network": { "tunnel_id": TUNNEL } },
        });
        merge(&mut body, changes);
        body
    }

    /// A TCP service on an IPv4 host, with `changes` merged in.
    fn tcp(changes: Value) -> Value {
        let mut body = json!({
            "name": "db",
            "type": "tcp",
            "tcp_port": 5432,
            "host": { "ipv4": "10.0.1.60", "network": { "tunnel_id": TUNNEL } },
        });
        merge(&mut body, changes);
        body
    }

    fn merge(body: &mut Value, changes: Value) {
        let (Value::Object(body), Value::Object(changes)) = (body, changes) else {
            panic!("bodies and changes are objects");
        };
        for (key, value) in changes {
            if value.is_null() {
                body.remove(&key);
            } else {
                body.insert(key, value);
            }
        }
    }

    /// The fields named by the errors of an invalid body.
    fn fields(result: Result<impl fmt::Debug, Vec<FieldError>>) -> Vec<String> {
        match result {
            Ok(spec) => panic!("expected errors, got {spec:?}"),
            Err(errors) => errors.into_iter().map(|e| e.field).collect(),
        }
    }

    /// The single error of an invalid body.
    fn only_error(result: Result<impl fmt::Debug, Vec<FieldError>>) -> FieldError {
        match result {
            Ok(spec) => panic!("expected an error, got {spec:?}"),
            Err(errors) => {
                assert_eq!(errors.len(), 1, "{errors:?}");
                errors.into_iter().next().expect("one error")
            }
        }
    }

    fn hostname_error(hostname: &str) -> String {
        let host = json!({ "hostname": hostname, "resolver_network": { "tunnel_id": TUNNEL } });
        let error = only_error(service(http(json!({ "host": host }))));
        assert_eq!(error.field, "host.hostname");
        error.message
    }

    #[test]
    fn ids_format_as_lowercase_uuids() {
        assert_eq!(format_id(&TUNNEL_BYTES), TUNNEL);
        assert_eq!(format_id(&[0; 16]), "00000000-0000-0000-0000-000000000000");
    }

    #[test]
    fn ids_parse_as_uuids_or_32_hex_digits() {
        assert_eq!(parse_id(TUNNEL), Some(TUNNEL_BYTES));
        assert_eq!(parse_id(&TUNNEL.to_uppercase()), Some(TUNNEL_BYTES));
        assert_eq!(parse_id(&TUNNEL.replace('-', "")), Some(TUNNEL_BYTES));
        assert_eq!(
            parse_id("0123ABCD456789EF0123456789ABCDEF"),
            Some(TUNNEL_BYTES)
        );
        for bad in [
            "",
            "{0123abcd-4567-89ef-0123-456789abcdef}",
            " 0123abcd-4567-89ef-0123-456789abcdef",
            "0123abcd-4567-89ef-0123-456789abcdef ",
            "0123abcd4-567-89ef-0123-456789abcdef",
            "0123abcd-4567-89ef-0123-456789abcdeg",
            "0123abcd-4567-89ef-0123456789abcdef-",
            "0123abcd456789ef0123456789abcde",
            "0123abcd456789ef0123456789abcdef0",
            "urn:uuid:0123abcd-4567-89ef-0123-456789abcdef",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_292_000), "2026-12-03T10:00:00Z");
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let spec = service(json!({
            "name": "web-server", "type": "http",
            "host": { "ipv4": "10.0.1.50", "network": { "tunnel_id": TUNNEL } },
            "http_port": 8080, "https_port": 8443,
            "tls_settings": { "cert_verification_mode": "verify_full" },
        }))
        .expect("the example is valid");
        assert_eq!(
            spec,
            ServiceSpec {
                name: "web-server".into(),
                kind: ServiceKind::Http,
                host: HostSpec::Ip {
                    ipv4: Some(Ipv4Addr::new(10, 0, 1, 50)),
                    ipv6: None,
                    tunnel_id: TUNNEL_BYTES,
                },
                http_port: Some(8080),
                https_port: Some(8443),
                tcp_port: None,
                app_protocol: None,
                cert_verification_mode: CertMode::VerifyFull,
            }
        );
    }

    #[test]
    fn every_host_shape_is_accepted() {
        let network = json!({ "tunnel_id": TUNNEL });
        let ipv6 = service(http(
            json!({ "host": { "ipv6": "FD00::50", "network": network } }),
        ))
        .expect("an ipv6 host");
        assert_eq!(
            ipv6.host,
            HostSpec::Ip {
                ipv4: None,
                ipv6: Some("fd00::50".parse().expect("literal")),
                tunnel_id: TUNNEL_BYTES
            }
        );
        let dual = service(http(json!({
            "host": { "ipv4": "10.0.0.1", "ipv6": "fd00::1", "network": network }
        })))
        .expect("a dual-stack host");
        assert!(matches!(
            dual.host,
            HostSpec::Ip {
                ipv4: Some(_),
                ipv6: Some(_),
                ..
            }
        ));
        let named = service(http(json!({
            "host": {
                "hostname": "API.Internal.Example.",
                "resolver_network": { "tunnel_id": TUNNEL, "resolver_ips": ["10.0.0.2", "fd00::53"] }
            }
        })))
        .expect("a hostname host");
        assert_eq!(
            named.host,
            HostSpec::Hostname {
                hostname: "api.internal.example".into(),
                tunnel_id: TUNNEL_BYTES,
                resolver_ips: vec![
                    "10.0.0.2".parse().expect("literal"),
                    "fd00::53".parse().expect("literal")
                ],
            }
        );
        let plain = service(http(json!({
            "host": { "hostname": "db", "resolver_network": { "tunnel_id": TUNNEL.replace('-', "") } }
        })))
        .expect("a hostname host without resolvers");
        assert!(matches!(
            plain.host,
            HostSpec::Hostname { ref resolver_ips, tunnel_id, .. }
                if resolver_ips.is_empty() && tunnel_id == TUNNEL_BYTES
        ));
    }

    #[test]
    fn host_shapes_are_exclusive() {
        let network = json!({ "tunnel_id": TUNNEL });
        let both = json!({ "ipv4": "10.0.0.1", "hostname": "db", "network": network });
        assert_eq!(fields(service(http(json!({ "host": both })))), ["host"]);
        assert_eq!(fields(service(http(json!({ "host": {} })))), ["host"]);
        assert_eq!(
            fields(service(http(json!({ "host": { "network": network } })))),
            ["host"]
        );
        // An IP host needs `network` and takes no `resolver_network`.
        assert_eq!(
            fields(service(http(json!({ "host": { "ipv4": "10.0.0.1" } })))),
            ["host.network"]
        );
        assert_eq!(
            fields(service(http(json!({
                "host": { "ipv4": "10.0.0.1", "network": network, "resolver_network": network }
            })))),
            ["host.resolver_network"]
        );
        // A hostname needs `resolver_network` and takes no `network`.
        assert_eq!(
            fields(service(http(json!({ "host": { "hostname": "db" } })))),
            ["host.resolver_network"]
        );
        assert_eq!(
            fields(service(http(json!({
                "host": { "hostname": "db", "network": network, "resolver_network": network }
            })))),
            ["host.network"]
        );
        assert_eq!(
            fields(service(http(
                json!({ "host": { "hostname": "db", "network": network } })
            ))),
            ["host.network", "host.resolver_network"]
        );
        assert_eq!(fields(service(http(json!({ "host": null })))), ["host"]);
    }

    #[test]
    fn ip_addresses_are_strict() {
        let network = json!({ "tunnel_id": TUNNEL });
        for bad in [
            "010.0.0.1",
            "1.2.3",
            "0x0a.0.0.1",
            "10.0.0.256",
            "fd00::1",
            " 10.0.0.1",
        ] {
            let host = json!({ "ipv4": bad, "network": network });
            assert_eq!(
                fields(service(http(json!({ "host": host })))),
                ["host.ipv4"],
                "{bad}"
            );
        }
        for bad in ["fe80::1%eth0", "fd00::g", "10.0.0.1", "[fd00::1]"] {
            let host = json!({ "ipv6": bad, "network": network });
            let error = only_error(service(http(json!({ "host": host }))));
            assert_eq!(error.field, "host.ipv6", "{bad}");
            if bad.contains('%') {
                assert!(error.message.contains("zone"), "{}", error.message);
            }
        }
    }

    #[test]
    fn tunnel_ids_are_checked_where_they_are() {
        let host = json!({ "ipv4": "10.0.0.1", "network": { "tunnel_id": "prod" } });
        let error = only_error(service(http(json!({ "host": host }))));
        assert_eq!(error.field, "host.network.tunnel_id");
        assert_eq!(error.message, BAD_ID);
        let host = json!({ "ipv4": "10.0.0.1", "network": {} });
        assert_eq!(
            fields(service(http(json!({ "host": host })))),
            ["host.network.tunnel_id"]
        );
        let host = json!({ "hostname": "db", "resolver_network": { "tunnel_id": "x" } });
        assert_eq!(
            fields(service(http(json!({ "host": host })))),
            ["host.resolver_network.tunnel_id"]
        );
    }

    #[test]
    fn resolver_ips_are_plain_addresses() {
        let with = |ips: Value| {
            let host = json!({
                "hostname": "db",
                "resolver_network": { "tunnel_id": TUNNEL, "resolver_ips": ips }
            });
            service(http(json!({ "host": host })))
        };
        assert_eq!(
            fields(with(json!([
                "10.0.0.1",
                "10.0.0.2",
                "10.0.0.3:53",
                "dns",
                "fe80::1%2"
            ]))),
            [
                "host.resolver_network.resolver_ips[2]",
                "host.resolver_network.resolver_ips[3]",
                "host.resolver_network.resolver_ips[4]"
            ]
        );
        let error = only_error(with(json!(["10.0.0.1:53"])));
        assert!(
            error.message.contains("without a port"),
            "{}",
            error.message
        );
        let eight: Vec<String> = (1..=8).map(|i| format!("10.0.0.{i}")).collect();
        let accepted = with(json!(eight)).expect("8 resolvers");
        assert!(
            matches!(accepted.host, HostSpec::Hostname { ref resolver_ips, .. } if resolver_ips.len() == 8)
        );
        let nine: Vec<String> = (1..=9).map(|i| format!("10.0.0.{i}")).collect();
        assert_eq!(
            fields(with(json!(nine))),
            ["host.resolver_network.resolver_ips"]
        );
        assert_eq!(
            fields(with(json!([]))),
            ["host.resolver_network.resolver_ips"]
        );
        let error = only_error(with(json!(["10.0.0.1", 53])));
        assert_eq!(error.field, "host.resolver_network.resolver_ips[1]");
    }

    #[test]
    fn hostnames_say_what_is_wrong() {
        assert!(hostname_error("https://api.example").contains("scheme"));
        assert!(hostname_error("api.example:8080").contains("port"));
        assert!(hostname_error("api.example/v1").contains("path"));
        assert!(hostname_error("api .example").contains("whitespace"));
        assert!(hostname_error("api.example\t").contains("whitespace"));
        for literal in [
            "10.0.0.1",
            "10.0.0.1:80",
            "fd00::1",
            "[fd00::1]",
            "[fd00::1]:443",
        ] {
            let message = hostname_error(literal);
            assert!(message.contains("IP literal"), "{literal}: {message}");
            assert!(message.contains("host.ipv4 or host.ipv6"), "{message}");
        }
        assert!(hostname_error("").contains("empty"));
        assert!(hostname_error(".").contains("at least one label"));
        assert!(hostname_error("api..example").contains("empty label"));
        assert!(hostname_error(".api.example").contains("empty label"));
        assert!(hostname_error("api.example..").contains("empty label"));
        let long_label = "a".repeat(64);
        assert!(hostname_error(&format!("{long_label}.example")).contains("63"));
        assert!(hostname_error("-api.example").contains("start or end"));
        assert!(hostname_error("api-.example").contains("start or end"));
        assert!(hostname_error("api_1.example").contains("only letters"));
        assert!(hostname_error("bücher.example").contains("xn--"));

        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest.len(), 253);
        assert!(check_hostname(&longest).is_ok());
        assert!(check_hostname(&format!("{longest}.")).is_ok());
        let too_long = format!("{longest}b");
        assert!(hostname_error(&too_long).contains("253"));
    }

    #[test]
    fn hostnames_are_normalized() {
        assert_eq!(
            check_hostname("API.Example.COM."),
            Ok("api.example.com".into())
        );
        assert_eq!(check_hostname("db"), Ok("db".into()));
        assert_eq!(check_hostname("a-1.b2"), Ok("a-1.b2".into()));
    }

    #[test]
    fn ports_are_integers_from_1_to_65535() {
        for field in ["http_port", "https_port"] {
            for bad in [
                json!(0),
                json!(65536),
                json!(-1),
                json!(1.5),
                json!("80"),
                json!(true),
            ] {
                let error = only_error(service(http(json!({ field: bad.clone() }))));
                assert_eq!(error.field, field, "{bad}");
                assert!(error.message.contains("1 to 65535"), "{}", error.message);
            }
            for good in [1, 65535] {
                let spec = service(http(json!({ field: good }))).expect("a valid port");
                let port = if field == "http_port" {
                    spec.http_port
                } else {
                    spec.https_port
                };
                assert_eq!(port, Some(good));
            }
        }
        for bad in [json!(0), json!(65536), json!(-1), json!(1.5), json!("80")] {
            assert_eq!(
                fields(service(tcp(json!({ "tcp_port": bad }))))[..],
                ["tcp_port"]
            );
        }
        assert_eq!(
            service(tcp(json!({ "tcp_port": 65535 })))
                .expect("valid")
                .tcp_port,
            Some(65535)
        );
    }

    #[test]
    fn http_ports_default_to_80_and_443() {
        let spec = service(http(json!({}))).expect("valid");
        assert_eq!((spec.http_port, spec.https_port), (Some(80), Some(443)));
        let spec = service(http(json!({ "https_port": 8443 }))).expect("valid");
        assert_eq!((spec.http_port, spec.https_port), (Some(80), Some(8443)));
        assert_eq!(spec.cert_verification_mode, CertMode::VerifyFull);
        assert_eq!(spec.tcp_port, None);
    }

    #[test]
    fn type_decides_which_ports_are_allowed() {
        assert_eq!(
            fields(service(http(
                json!({ "tcp_port": 5432, "app_protocol": "postgresql" })
            ))),
            ["tcp_port", "app_protocol"]
        );
        assert_eq!(
            fields(service(tcp(json!({ "http_port": 80, "https_port": 443 })))),
            ["http_port", "https_port"]
        );
        let error = only_error(service(tcp(json!({ "tcp_port": null }))));
        assert_eq!(error.field, "tcp_port");
        assert!(error.message.contains("required"));
        let spec = service(tcp(json!({ "app_protocol": "postgresql" }))).expect("valid");
        assert_eq!(spec.kind, ServiceKind::Tcp);
        assert_eq!((spec.http_port, spec.https_port), (None, None));
        assert_eq!(spec.tcp_port, Some(5432));
        assert_eq!(spec.app_protocol.as_deref(), Some("postgresql"));
        for bad in ["", "PostgreSQL", "a b", &"a".repeat(33)] {
            assert_eq!(
                fields(service(tcp(json!({ "app_protocol": bad })))),
                ["app_protocol"],
                "{bad}"
            );
        }
        assert_eq!(fields(service(http(json!({ "type": "udp" })))), ["type"]);
        assert_eq!(fields(service(http(json!({ "type": null })))), ["type"]);
    }

    #[test]
    fn names_follow_the_rules() {
        for good in ["a", "web-server", "db.prod_1", "9lives", &"a".repeat(64)] {
            assert!(service(http(json!({ "name": good }))).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-web",
            ".web",
            "_web",
            "web server",
            "wéb",
            &"a".repeat(65),
        ] {
            assert_eq!(
                fields(service(http(json!({ "name": bad })))),
                ["name"],
                "{bad}"
            );
        }
        assert_eq!(fields(service(http(json!({ "name": null })))), ["name"]);
    }

    #[test]
    fn tls_settings_are_optional() {
        for (text, mode) in [
            ("verify_full", CertMode::VerifyFull),
            ("verify_ca", CertMode::VerifyCa),
            ("disabled", CertMode::Disabled),
        ] {
            let tls = json!({ "cert_verification_mode": text });
            let spec = service(http(json!({ "tls_settings": tls.clone() }))).expect("valid");
            assert_eq!(spec.cert_verification_mode, mode);
            let spec = service(tcp(json!({ "tls_settings": tls }))).expect("valid for tcp too");
            assert_eq!(spec.cert_verification_mode, mode);
        }
        let spec = service(http(json!({ "tls_settings": {} }))).expect("valid");
        assert_eq!(spec.cert_verification_mode, CertMode::VerifyFull);
        let tls = json!({ "cert_verification_mode": "none" });
        assert_eq!(
            fields(service(http(json!({ "tls_settings": tls })))),
            ["tls_settings.cert_verification_mode"]
        );
    }

    #[test]
    fn every_error_of_a_body_is_reported() {
        let body = http(json!({
            "name": "-bad",
            "http_port": 0,
            "host": { "ipv4": "10.0.0.999", "network": { "tunnel_id": TUNNEL } },
        }));
        assert_eq!(fields(service(body)), ["name", "host.ipv4", "http_port"]);
        let errors = service(json!({})).expect_err("an empty object");
        assert_eq!(errors.len(), 3);
    }

    #[test]
    fn unknown_fields_are_named() {
        let error = only_error(service(http(json!({ "colour": "blue" }))));
        assert_eq!(error.field, "colour");
        assert!(
            error.message.starts_with("unknown field `colour`"),
            "{}",
            error.message
        );
        assert!(!error.message.contains("line"), "{}", error.message);
        let host = json!({ "ipv4": "10.0.0.1", "network": { "tunnel_id": TUNNEL, "id": 1 } });
        let error = only_error(service(http(json!({ "host": host }))));
        assert_eq!(error.field, "host.network.id");
        assert!(error.message.contains("unknown field `id`"));
        let tls = json!({ "mode": "disabled" });
        assert_eq!(
            fields(service(http(json!({ "tls_settings": tls })))),
            ["tls_settings.mode"]
        );
    }

    #[test]
    fn mistyped_fields_are_named() {
        assert_eq!(fields(service(http(json!({ "name": 5 })))), ["name"]);
        let host = json!({ "ipv4": "10.0.0.1", "network": { "tunnel_id": 7 } });
        assert_eq!(
            fields(service(http(json!({ "host": host })))),
            ["host.network.tunnel_id"]
        );
        // serde would take a struct written as an array of its fields; the API does not.
        let host = json!(["10.0.0.1", null, null, { "tunnel_id": TUNNEL }]);
        let error = only_error(service(http(json!({ "host": host }))));
        assert_eq!(error.field, "host");
        assert!(error.message.contains("JSON object"), "{}", error.message);
    }

    #[test]
    fn bodies_must_be_one_json_object() {
        for empty in [&b""[..], b"  \n"] {
            assert_eq!(
                parse_body::<ServiceBody>(empty).expect_err("no body"),
                FieldError::new("", "the request needs a JSON body")
            );
        }
        for bad in [&b"{"[..], b"{\"name\": }", b"{} {}", b"nul"] {
            let error = parse_body::<ServiceBody>(bad).expect_err("not JSON");
            assert_eq!(error.field, "");
            assert!(
                error.message.contains("not valid JSON"),
                "{}",
                error.message
            );
        }
        for bad in [&b"[\"web\", \"http\"]"[..], b"null", b"\"web\""] {
            let error = parse_body::<ServiceBody>(bad).expect_err("not an object");
            assert_eq!(error.field, "");
            assert!(error.message.contains("JSON object"), "{}", error.message);
        }
        let error = parse_body::<ServiceBody>(br#"{"name": "a", "name": "b"}"#)
            .expect_err("a duplicate field");
        assert!(error.message.contains("duplicate"), "{}", error.message);
    }

    #[test]
    fn specs_round_trip_through_json() {
        let bodies = [
            http(json!({})),
            http(json!({ "host": {
                "ipv4": "10.0.0.1", "ipv6": "fd00::1",
                "network": { "tunnel_id": TUNNEL.replace('-', "") } } })),
            http(json!({ "host": {
                "hostname": "Db.Example.", "resolver_network": {
                    "tunnel_id": TUNNEL, "resolver_ips": ["10.0.0.2", "fd00::53"] } } })),
            tcp(json!({ "app_protocol": "mysql",
                "tls_settings": { "cert_verification_mode": "disabled" } })),
        ];
        for body in bodies {
            let spec = service(body).expect("valid");
            let bytes = serde_json::to_vec(&spec).expect("a spec serializes");
            let again = validate_service(parse_body(&bytes).expect("its JSON parses"));
            assert_eq!(again.as_ref(), Ok(&spec));
            let stored: ServiceSpec =
                serde_json::from_slice(&bytes).expect("a stored spec reads back");
            assert_eq!(stored, spec);
        }
    }

    #[test]
    fn specs_serialize_to_the_public_shape() {
        let spec = service(http(json!({ "http_port": 8080 }))).expect("valid");
        assert_eq!(
            serde_json::to_value(&spec).expect("a spec serializes"),
            json!({
                "name": "web-server", "type": "http",
                "host": { "ipv4": "10.0.1.50", "network": { "tunnel_id": TUNNEL } },
                "http_port": 8080, "https_port": 443,
                "tls_settings": { "cert_verification_mode": "verify_full" },
            })
        );
        let spec = service(tcp(json!({ "host": {
            "hostname": "db", "resolver_network": { "tunnel_id": TUNNEL } } })))
        .expect("valid");
        assert_eq!(
            service_json(&[0xff; 16], &spec, 1_796_292_000, 1_796_292_060),
            json!({
                "service_id": "ffffffff-ffff-ffff-ffff-ffffffffffff",
                "name": "db", "type": "tcp",
                "host": { "hostname": "db", "resolver_network": { "tunnel_id": TUNNEL } },
                "tcp_port": 5432,
                "tls_settings": { "cert_verification_mode": "verify_full" },
                "created_at": "2026-12-03T10:00:00Z",
                "updated_at": "2026-12-03T10:01:00Z",
            })
        );
        let bad = br#"{"name": "x", "type": "tcp", "host": {}}"#;
        let error = serde_json::from_slice::<ServiceSpec>(bad).expect_err("invalid stored spec");
        assert!(
            error.to_string().contains("tcp_port: is required"),
            "{error}"
        );
    }

    fn network(body: Value) -> Result<NetworkSpec, Vec<FieldError>> {
        let bytes = serde_json::to_vec(&body).expect("a Value serializes");
        validate_network(parse_body(&bytes).map_err(|error| vec![error])?)
    }

    #[test]
    fn networks_name_a_tunnel_or_none() {
        let spec = network(json!({ "name": "office", "tunnel_id": TUNNEL })).expect("valid");
        assert_eq!(spec.tunnel_id, Some(TUNNEL_BYTES));
        for everywhere in [
            json!({ "name": "all" }),
            json!({ "name": "all", "tunnel_id": null }),
        ] {
            assert_eq!(network(everywhere).expect("valid").tunnel_id, None);
        }
        assert_eq!(
            fields(network(json!({ "name": "-x", "tunnel_id": "nope" }))),
            ["name", "tunnel_id"]
        );
        assert_eq!(
            fields(network(json!({ "name": "x", "cidr": "10/8" }))),
            ["cidr"]
        );
        assert_eq!(
            network_json(&TUNNEL_BYTES, &spec, 0, 0),
            json!({
                "network_id": TUNNEL, "name": "office", "tunnel_id": TUNNEL,
                "created_at": "1970-01-01T00:00:00Z", "updated_at": "1970-01-01T00:00:00Z",
            })
        );
        let all = network(json!({ "name": "all" })).expect("valid");
        let text = serde_json::to_string(&all).expect("a spec serializes");
        assert_eq!(text, r#"{"name":"all"}"#);
        assert_eq!(
            serde_json::from_str::<NetworkSpec>(&text).expect("reads back"),
            all
        );
    }

    fn binding(body: Value) -> Result<BindingSpec, Vec<FieldError>> {
        let bytes = serde_json::to_vec(&body).expect("a Value serializes");
        validate_binding(parse_body(&bytes).map_err(|error| vec![error])?)
    }

    #[test]
    fn bindings_serve_exactly_one_target() {
        let spec = binding(json!({ "name": "MY_BINDING", "service_id": TUNNEL })).expect("valid");
        assert_eq!(
            spec,
            BindingSpec {
                name: "MY_BINDING".into(),
                target: BindingTargetSpec::Service(TUNNEL_BYTES),
                listen: "127.0.0.1:0".parse().expect("literal"),
                mode: BindingModeSpec::Proxy,
            }
        );
        let spec = binding(json!({ "name": "_net", "network_id": TUNNEL })).expect("valid");
        assert_eq!(spec.target, BindingTargetSpec::Network(TUNNEL_BYTES));
        let spec = binding(json!({ "name": "t", "tunnel_id": TUNNEL })).expect("valid");
        assert_eq!(spec.target, BindingTargetSpec::Tunnel(TUNNEL_BYTES));

        let error = only_error(binding(json!({ "name": "B" })));
        assert_eq!(error, FieldError::new("", ONE_TARGET));
        let errors = binding(json!({
            "name": "B", "service_id": TUNNEL, "network_id": TUNNEL, "tunnel_id": TUNNEL
        }))
        .expect_err("three targets");
        assert_eq!(
            errors,
            [
                FieldError::new("network_id", ONE_TARGET),
                FieldError::new("tunnel_id", ONE_TARGET)
            ]
        );
        assert_eq!(
            fields(binding(json!({ "name": "B", "service_id": "x" }))),
            ["service_id"]
        );
    }

    #[test]
    fn binding_names_listen_and_mode() {
        for bad in ["", "1B", "MY-BINDING", "my binding", "é", &"B".repeat(65)] {
            assert_eq!(
                fields(binding(json!({ "name": bad, "tunnel_id": TUNNEL }))),
                ["name"],
                "{bad}"
            );
        }
        assert!(binding(json!({ "name": "B".repeat(64), "tunnel_id": TUNNEL })).is_ok());

        let spec = binding(
            json!({ "name": "B", "service_id": TUNNEL, "listen": "[::1]:8080",
            "mode": "tcp" }),
        )
        .expect("valid");
        assert_eq!(spec.listen, "[::1]:8080".parse().expect("literal"));
        assert_eq!(spec.mode, BindingModeSpec::Tcp);
        for bad in ["127.0.0.1", "localhost:80", "127.0.0.1:65536", ""] {
            assert_eq!(
                fields(binding(
                    json!({ "name": "B", "tunnel_id": TUNNEL, "listen": bad })
                )),
                ["listen"],
                "{bad}"
            );
        }
        assert_eq!(
            fields(binding(
                json!({ "name": "B", "network_id": TUNNEL, "mode": "tcp" })
            )),
            ["mode"]
        );
        assert_eq!(
            fields(binding(
                json!({ "name": "B", "tunnel_id": TUNNEL, "mode": "udp" })
            )),
            ["mode"]
        );

        let value = binding_json(&[0; 16], &spec, 0, 60);
        assert_eq!(value["binding_id"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(value["service_id"], TUNNEL);
        assert_eq!(value["listen"], "[::1]:8080");
        assert_eq!(value["mode"], "tcp");
        assert_eq!(value["updated_at"], "1970-01-01T00:01:00Z");
        let text = serde_json::to_string(&spec).expect("a spec serializes");
        assert_eq!(
            serde_json::from_str::<BindingSpec>(&text).expect("reads back"),
            spec
        );
    }

    #[test]
    fn tunnels_and_tokens() {
        let name = |body: Value| {
            let bytes = serde_json::to_vec(&body).expect("a Value serializes");
            validate_tunnel_name(parse_body(&bytes).map_err(|error| vec![error])?)
        };
        assert_eq!(name(json!({ "name": "prod-1" })), Ok("prod-1".into()));
        assert_eq!(fields(name(json!({ "name": "prod 1" }))), ["name"]);
        assert_eq!(fields(name(json!({}))), ["name"]);
        assert_eq!(fields(name(json!({ "name": "p", "id": 1 }))), ["id"]);

        let token = |body: Value| {
            let bytes = serde_json::to_vec(&body).expect("a Value serializes");
            validate_token(parse_body(&bytes).map_err(|error| vec![error])?)
        };
        assert_eq!(
            token(json!({ "name": "CI deploy — prod", "role": "bind" })),
            Ok(TokenSpec {
                name: "CI deploy — prod".into(),
                role: Role::Bind
            })
        );
        assert_eq!(
            fields(token(json!({ "name": "a\nb", "role": "root" }))),
            ["name", "role"]
        );
        assert_eq!(
            fields(token(json!({ "name": "x".repeat(65), "role": "read" }))),
            ["name"]
        );
        assert_eq!(fields(token(json!({}))), ["name", "role"]);

        for role in [Role::Read, Role::Bind, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            let text = serde_json::to_string(&role).expect("a role serializes");
            assert_eq!(text, format!("\"{}\"", role.as_str()));
            assert_eq!(
                serde_json::from_str::<Role>(&text).expect("reads back"),
                role
            );
        }
        assert_eq!("Admin".parse::<Role>(), Err(UnknownRole));
        assert!(Role::Read < Role::Bind && Role::Bind < Role::Admin);
    }

    #[test]
    fn envelopes() {
        assert_eq!(
            envelope_ok(json!({ "id": 1 })),
            json!({ "success": true, "errors": [], "messages": [], "result": { "id": 1 } })
        );
        assert_eq!(
            envelope_list(vec![json!(1), json!(2)], 2, 2, 5),
            json!({
                "success": true, "errors": [], "messages": [], "result": [1, 2],
                "result_info": { "page": 2, "per_page": 2, "count": 2, "total_count": 5 },
            })
        );
        assert_eq!(
            envelope_error(CODE_NOT_FOUND, "no such service"),
            json!({
                "success": false,
                "errors": [{ "code": 1004, "message": "no such service" }],
                "messages": [], "result": null,
            })
        );
        let errors = [
            FieldError::new("", "the request needs a JSON body"),
            FieldError::new("host.ipv4", "must be an IPv4 address"),
        ];
        assert_eq!(
            envelope_field_errors(&errors),
            json!({
                "success": false,
                "errors": [
                    { "code": 1001, "message": "the request needs a JSON body", "field": "" },
                    { "code": 1001, "message": "host.ipv4: must be an IPv4 address",
                      "field": "host.ipv4" },
                ],
                "messages": [], "result": null,
            })
        );
    }
}
