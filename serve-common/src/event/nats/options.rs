//! Where and how the NATS link connects: [`NatsOptions`], read from
//! `[events.nats]`, and the client's connection.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Config, ConfigError};
pub use crate::event::Delivery;
use crate::event::NatsSettings;

/// The default of [`NatsOptions::buffer`].
pub const DEFAULT_BUFFER: usize = 65_536;
/// The default of [`NatsOptions::ack_window`].
pub const DEFAULT_ACK_WINDOW: usize = 4_096;
/// The most [`NatsOptions::buffer`] and [`NatsOptions::ack_window`] take.
const MAX_BUFFER: usize = 1 << 24;
/// The longest duration a NATS setting takes (JetStream counts in
/// nanoseconds, as an `i64`).
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How the service's JetStream stream is made (config
/// `[events.nats.stream]`). The link creates the stream when it does not
/// exist and checks it when it does: a stream whose settings differ is an
/// error (logged, on `/manage/health`), never silently reconfigured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// The stream's name (default: the subject prefix with `.` as `_`).
    pub name: Option<String>,
    /// How long an event is kept (default 24 hours): a process that is
    /// away longer misses what is older.
    pub max_age: Duration,
    /// The most bytes kept (default 1 GiB); the oldest go first.
    pub max_bytes: i64,
    /// Copies in a cluster (default 1; at most 5).
    pub replicas: usize,
    /// How long the server remembers an event's id to drop a resent copy
    /// (default 2 minutes). An outage longer than this, with events sent
    /// but not acknowledged when it began, can store those twice.
    pub duplicate_window: Duration,
    /// Kept in memory instead of files (default false).
    pub memory: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            name: None,
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 1 << 30,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            memory: false,
        }
    }
}

/// How to authenticate to the NATS server.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A token.
    Token(String),
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// An NKey seed.
    NKey(String),
    /// A `.creds` file (JWT and NKey seed).
    CredsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets themselves.
        match self {
            Self::None => f.write_str("None"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user}, <redacted>)"),
            Self::NKey(_) => f.write_str("NKey(<redacted>)"),
            Self::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
        }
    }
}

/// TLS settings.
#[derive(Clone, Debug, Default)]
pub struct NatsTls {
    /// Refuse a plain connection.
    pub required: bool,
    /// Extra root certificates (PEM).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Where and how to connect; see [`NatsOptions::from_config`]. Its
/// `Debug` shows no secret (nor the URL's user information).
#[derive(Clone)]
pub struct NatsOptions {
    /// The server URL(s), comma-separated: `nats://host:4222,nats://other:4222`.
    pub url: String,
    /// The subjects' prefix: one per service (see the module docs).
    pub subject_prefix: String,
    /// How events travel (default JetStream).
    pub delivery: Delivery,
    /// The JetStream stream (with [`Delivery::JetStream`]).
    pub stream: StreamOptions,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
    /// Events kept while disconnected or not yet confirmed, at most;
    /// beyond it they are dropped, counted and logged.
    pub buffer: usize,
    /// JetStream: events published and not yet acknowledged, at most (the
    /// link sends the next ones as acknowledgements come back).
    pub ack_window: usize,
    /// JetStream, one-per-service handlers: how long the server waits for
    /// a process to finish an event before it hands the event to another
    /// (default 30 s; a process that dies mid-handler loses nothing).
    pub ack_wait: Duration,
    /// The longest wait between two reconnection attempts (each wait is
    /// jittered, so a fleet does not reconnect in step).
    pub max_reconnect_delay: Duration,
    /// The connection's name, as the server shows it.
    pub name: Option<String>,
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &self.redacted_url())
            .field("subject_prefix", &self.subject_prefix)
            .field("delivery", &self.delivery)
            .field("stream", &self.stream)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("buffer", &self.buffer)
            .field("ack_window", &self.ack_window)
            .field("ack_wait", &self.ack_wait)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("name", &self.name)
            .finish()
    }
}

impl NatsOptions {
    /// Options for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            subject_prefix: format!(
                "serve-common.{}",
                crate::identity::app_name()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    })
                    .collect::<String>()
            ),
            delivery: Delivery::default(),
            stream: StreamOptions::default(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            buffer: DEFAULT_BUFFER,
            ack_window: DEFAULT_ACK_WINDOW,
            ack_wait: Duration::from_secs(30),
            max_reconnect_delay: Duration::from_secs(2),
            name: None,
        }
    }

    /// Reads the `[events.nats]` config section; `None` when `url` is not
    /// set (NATS off). Keys: `url`, `subject_prefix`, `delivery`
    /// (`"jetstream"` or `"at-most-once"`), `token`, `user` and
    /// `password`, `nkey` (a seed), `creds` (a file), `tls` (bool: require
    /// TLS), `ca`, `client_cert` and `client_key` (files), `buffer`
    /// (events), `ack_window` (events), `ack_wait_s`,
    /// `max_reconnect_delay_ms`, `name`;
    /// and `[events.nats.stream]`: `name`, `max_age_s`, `max_bytes`,
    /// `replicas`, `duplicate_window_s`, `memory`.
    pub fn from_config(config: &Config) -> Result<Option<Self>, ConfigError> {
        let settings: NatsSettings = config.get_opt("events.nats")?.unwrap_or_default();
        Ok(Self::from_settings(&settings))
    }

    /// [`from_config`](Self::from_config) from the typed section.
    pub fn from_settings(settings: &NatsSettings) -> Option<Self> {
        let mut options = Self::new(settings.url.clone()?);
        if let Some(prefix) = &settings.subject_prefix {
            options.subject_prefix = prefix.clone();
        }
        options.delivery = settings.delivery.unwrap_or_default();
        options.auth = if let Some(token) = &settings.token {
            NatsAuth::Token(token.clone())
        } else if let Some(user) = &settings.user {
            NatsAuth::UserPassword {
                user: user.clone(),
                password: settings.password.clone().unwrap_or_default(),
            }
        } else if let Some(seed) = &settings.nkey {
            NatsAuth::NKey(seed.clone())
        } else if let Some(creds) = &settings.creds {
            NatsAuth::CredsFile(creds.into())
        } else {
            NatsAuth::None
        };
        options.tls.required = settings.tls.unwrap_or(false);
        options.tls.ca = settings.ca.as_ref().map(PathBuf::from);
        if let (Some(cert), Some(key)) = (&settings.client_cert, &settings.client_key) {
            options.tls.client_cert = Some((cert.into(), key.into()));
        }
        let size = |value: Option<u64>, default: usize| {
            value.map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
        };
        options.buffer = size(settings.buffer, DEFAULT_BUFFER);
        options.ack_window = size(settings.ack_window, DEFAULT_ACK_WINDOW);
        if let Some(seconds) = settings.ack_wait_s {
            options.ack_wait = Duration::from_secs(seconds);
        }
        if let Some(ms) = settings.max_reconnect_delay_ms {
            options.max_reconnect_delay = Duration::from_millis(ms);
        }
        options.name = settings.name.clone();
        let stream = &settings.stream;
        let defaults = StreamOptions::default();
        options.stream = StreamOptions {
            name: stream.name.clone(),
            max_age: stream
                .max_age_s
                .map_or(defaults.max_age, Duration::from_secs),
            max_bytes: stream
                .max_bytes
                .map_or(defaults.max_bytes, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            replicas: size(stream.replicas, defaults.replicas),
            duplicate_window: stream
                .duplicate_window_s
                .map_or(defaults.duplicate_window, Duration::from_secs),
            memory: stream.memory.unwrap_or(defaults.memory),
        };
        Some(options)
    }

    /// The URL(s) without user information, for logs.
    pub fn redacted_url(&self) -> String {
        crate::config::redact_url_userinfo(&self.url)
    }

    /// The JetStream stream's name: [`StreamOptions::name`], or the
    /// subject prefix with `.` as `_`.
    pub fn stream_name(&self) -> String {
        self.stream
            .name
            .clone()
            .unwrap_or_else(|| self.subject_prefix.replace('.', "_"))
    }

    /// What makes these options unusable, if anything.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.url.trim().is_empty() {
            return Err("`url` is empty".into());
        }
        if !super::subjects::valid_prefix(&self.subject_prefix) {
            return Err(format!(
                "subject prefix {:?} is not a NATS subject (tokens of letters, digits, `-`, `_`, separated by `.`)",
                self.subject_prefix
            ));
        }
        if self.delivery == Delivery::JetStream {
            let name = self.stream_name();
            let bad = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\');
            if name.is_empty() || name.len() > 255 || name.contains(bad) {
                return Err(format!(
                    "stream name {name:?} is not a JetStream stream name (no `.`, `*`, `>`, slashes or spaces; at most 255 bytes)"
                ));
            }
            if !(1..=5).contains(&self.stream.replicas) {
                return Err(format!(
                    "stream replicas = {} (JetStream keeps 1 to 5 copies)",
                    self.stream.replicas
                ));
            }
            if self.stream.duplicate_window.is_zero() || self.stream.max_age.is_zero() {
                return Err(
                    "stream max_age_s and duplicate_window_s must be more than 0".to_owned(),
                );
            }
            if self.stream.duplicate_window > self.stream.max_age {
                return Err(format!(
                    "stream duplicate_window_s ({} s) is longer than max_age_s ({} s)",
                    self.stream.duplicate_window.as_secs(),
                    self.stream.max_age.as_secs()
                ));
            }
            if self.stream.max_bytes <= 0 {
                return Err("stream max_bytes must be more than 0".to_owned());
            }
        }
        if self.ack_wait.is_zero() {
            return Err("`ack_wait_s` must be more than 0".to_owned());
        }
        if self.buffer == 0 || self.ack_window == 0 {
            return Err("`buffer` and `ack_window` must be at least 1".to_owned());
        }
        if self.buffer > MAX_BUFFER || self.ack_window > MAX_BUFFER {
            return Err(format!(
                "`buffer` and `ack_window` are at most {MAX_BUFFER} events"
            ));
        }
        for (name, value) in [
            ("ack_wait_s", self.ack_wait),
            ("stream max_age_s", self.stream.max_age),
            ("stream duplicate_window_s", self.stream.duplicate_window),
            ("max_reconnect_delay_ms", self.max_reconnect_delay),
        ] {
            if value > MAX_DURATION {
                return Err(format!(
                    "`{name}` is more than ten years ({} s)",
                    value.as_secs()
                ));
            }
        }
        Ok(())
    }
}

impl NatsOptions {
    /// Whether the connection uses TLS.
    pub(super) fn uses_tls(&self) -> bool {
        self.tls.required
            || self.tls.ca.is_some()
            || self.tls.client_cert.is_some()
            || self.url.split(',').any(|u| u.trim().starts_with("tls://"))
    }
}

/// Why a TLS connection to the first server fails, if it is TLS that
/// fails: the client reports only "IO error". Connects on its own, reads
/// the server's `INFO`, makes the handshake with the same roots and
/// client certificate, then asks for a `PONG` (a server that verifies
/// client certificates refuses after the handshake).
pub(super) async fn diagnose_tls(options: &NatsOptions) -> Option<String> {
    use std::sync::Arc;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let (urls, _) = split_userinfo(&options.url);
    let first = urls.split(',').next()?.trim().to_owned();
    let address = first.split("://").last()?.to_owned();
    let host = address
        .rsplit_once(':')
        .map_or(address.as_str(), |(h, _)| h);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let address = if address.contains(':') {
        address.clone()
    } else {
        format!("{address}:4222")
    };
    let mut roots = rustls::RootCertStore::empty();
    match &options.tls.ca {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("the CA file {} is not PEM: {e}", ca.display()));
            let certs = match certs {
                Ok(certs) => certs,
                Err(error) => return Some(error),
            };
            for cert in certs.flatten() {
                let _ = roots.add(cert);
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots),
        Err(error) => return Some(error.to_string()),
    };
    let config = match &options.tls.client_cert {
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(cert) {
                Ok(certs) => certs.flatten().collect(),
                Err(e) => {
                    return Some(format!(
                        "the client certificate {} is not PEM: {e}",
                        cert.display()
                    ))
                }
            };
            let key = match PrivateKeyDer::from_pem_file(key) {
                Ok(key) => key,
                Err(e) => return Some(format!("the client key {} is not PEM: {e}", key.display())),
            };
            match builder.with_client_auth_cert(certs, key) {
                Ok(config) => config,
                Err(e) => return Some(format!("the client certificate cannot be used: {e}")),
            }
        }
        None => builder.with_no_client_auth(),
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(&address).await.ok()?;
        let mut plain = BufReader::new(tcp);
        let mut info = String::new();
        plain.read_line(&mut info).await.ok()?;
        if !info.starts_with("INFO") {
            return None;
        }
        let name = ServerName::try_from(host.clone()).ok()?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut tls = match connector.connect(name, plain.into_inner()).await {
            Ok(tls) => tls,
            Err(error) => return Some(format!("the TLS handshake with {address} failed: {error}")),
        };
        let hello = b"CONNECT {\"verbose\":false}\r\nPING\r\n";
        if let Err(error) = tls.write_all(hello).await {
            return Some(format!(
                "the server at {address} closed the TLS connection: {error}"
            ));
        }
        let mut reader = BufReader::new(tls);
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) => Some(format!("the server at {address} closed the TLS connection (does it want a client certificate?)")),
            Ok(_) if line.starts_with("-ERR") => Some(format!("the server at {address} refused: {}", line.trim())),
            Ok(_) => None,
            Err(error) => Some(format!("the server at {address} ended the TLS connection: {error}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
}

/// Splits `user:pass@` (or `token@`) out of the URLs: the client would log
/// the URLs whole. Returns the bare URLs and the credentials found.
pub(super) fn split_userinfo(urls: &str) -> (String, Option<NatsAuth>) {
    let mut auth = None;
    let bare: Vec<String> = urls
        .split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let info = &url[scheme + 3..at];
                auth.get_or_insert_with(|| match info.split_once(':') {
                    Some((user, password)) => NatsAuth::UserPassword {
                        user: user.to_owned(),
                        password: password.to_owned(),
                    },
                    None => NatsAuth::Token(info.to_owned()),
                });
                format!("{}{}", &url[..scheme + 3], &url[at + 1..])
            }
            _ => url.trim().to_owned(),
        })
        .collect();
    (bare.join(","), auth)
}

pub(super) use crate::event::jittered;

/// The wait before reconnection attempt `attempts`: doubling from 50 ms
/// up to `max`, jittered.
pub(super) fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16) as u32;
    let base = Duration::from_millis(50)
        .saturating_mul(1 << doublings)
        .min(max);
    jittered(base)
}

/// The client for `options`, connecting (and reconnecting) in the
/// background; the client's events go to `events`.
pub(super) async fn connect(
    options: &NatsOptions,
    events: mpsc::UnboundedSender<async_nats::Event>,
) -> Result<async_nats::Client, String> {
    let (url, url_auth) = split_userinfo(&options.url);
    let auth = match (&options.auth, url_auth) {
        (NatsAuth::None, Some(from_url)) => from_url,
        (auth, _) => auth.clone(),
    };
    let mut connect = match &auth {
        NatsAuth::None => async_nats::ConnectOptions::new(),
        NatsAuth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
        NatsAuth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        NatsAuth::NKey(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
        NatsAuth::CredsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| format!("cannot read the creds file {}: {e}", path.display()))?,
    };
    if options.tls.required {
        connect = connect.require_tls(true);
    }
    if let Some(ca) = &options.tls.ca {
        if !ca.is_file() {
            return Err(format!("the CA file {} cannot be read", ca.display()));
        }
        connect = connect.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &options.tls.client_cert {
        for file in [cert, key] {
            if !file.is_file() {
                return Err(format!(
                    "the client certificate file {} cannot be read",
                    file.display()
                ));
            }
        }
        connect = connect.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(name) = &options.name {
        connect = connect.name(name);
    }
    let max_delay = options.max_reconnect_delay;
    connect
        // A burst waits in the subscription's queue rather than being
        // dropped by the client as a slow consumer.
        .subscription_capacity(options.buffer.max(65_536))
        .client_capacity(super::BATCH * 2)
        // Not `no_echo`: a one-per-service group may hand a process its
        // own event (the receiver skips its own events otherwise).
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, max_delay))
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event);
            }
        })
        .connect(url.as_str())
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_split_out() {
        let (bare, auth) = split_userinfo("nats://u:pw@h:4222,nats://h2:4222");
        assert_eq!(bare, "nats://h:4222,nats://h2:4222");
        assert!(
            matches!(auth, Some(NatsAuth::UserPassword { ref user, ref password }) if user == "u" && password == "pw")
        );
        let (_, auth) = split_userinfo("nats://tok@h");
        assert!(matches!(auth, Some(NatsAuth::Token(ref t)) if t == "tok"));
        let options = NatsOptions::new("nats://u:secret@h");
        assert!(!format!("{options:?}").contains("secret"));
    }

    #[test]
    fn urls_lose_their_user_information_in_logs() {
        let options = NatsOptions::new("nats://u:secret@h:4222,nats://h2:4222");
        assert_eq!(
            options.redacted_url(),
            "nats://<redacted>@h:4222,nats://h2:4222"
        );
        let debug = format!(
            "{:?}",
            NatsAuth::UserPassword {
                user: "u".into(),
                password: "secret".into()
            }
        );
        assert!(!debug.contains("secret"));
    }

    #[test]
    fn reconnection_waits_are_jittered_and_bounded() {
        let max = Duration::from_secs(2);
        let waits: Vec<Duration> = (0..64).map(|_| reconnect_delay(30, max)).collect();
        assert!(
            waits.iter().all(|w| *w >= max / 2 && *w <= max),
            "{waits:?}"
        );
        let distinct: std::collections::BTreeSet<Duration> = waits.iter().copied().collect();
        assert!(distinct.len() > 32, "not jittered: {waits:?}");
        assert!(reconnect_delay(1, max) <= Duration::from_millis(50));
        assert!(reconnect_delay(usize::MAX, max) <= max);
    }

    #[test]
    fn bad_stream_settings_are_refused() {
        let mut options = NatsOptions::new("nats://h");
        options.subject_prefix = "svc.a".into();
        assert_eq!(options.stream_name(), "svc_a");
        assert!(options.validate().is_ok());
        options.stream.replicas = 7;
        assert!(options.validate().unwrap_err().contains("replicas"));
        options.stream.replicas = 3;
        options.stream.name = Some("a.b".into());
        assert!(options.validate().unwrap_err().contains("stream name"));
        options.stream.name = None;
        options.stream.duplicate_window = Duration::from_secs(10 * 24 * 3600);
        assert!(options.validate().unwrap_err().contains("duplicate_window"));
        options.delivery = Delivery::AtMostOnce;
        assert!(options.validate().is_ok(), "no stream at most once");
        options.ack_wait = Duration::from_secs(u64::MAX);
        assert!(options.validate().unwrap_err().contains("ack_wait_s"));
        options.ack_wait = Duration::from_secs(30);
        options.buffer = usize::MAX;
        assert!(options.validate().unwrap_err().contains("at most"));
    }
}
