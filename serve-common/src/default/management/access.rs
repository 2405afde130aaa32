//! Who reaches the management endpoints: the `[management]` config
//! section (see the [module docs](super#who-reaches-them)), and the
//! middleware that applies it to every request.

use std::future::{ready, Future, Ready};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use serde::Deserialize;

use crate::config::{Config, ConfigError, Secret, Section};
use crate::default::errors::json_error;

/// A group of management endpoints, as `management.expose` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/manage/health`.
    Health,
    /// `/manage/version`.
    Version,
    /// `/` and `/manage/spec`.
    Spec,
    /// `/manage/docs` and its assets.
    Docs,
    /// `/manage/logging/level` and `/manage/logging/targets`.
    Logging,
    /// `/manage/metrics`.
    Metrics,
}

impl Endpoint {
    pub(crate) const ALL: [Self; 6] = [
        Self::Health,
        Self::Version,
        Self::Spec,
        Self::Docs,
        Self::Logging,
        Self::Metrics,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Version => "version",
            Self::Spec => "spec",
            Self::Docs => "docs",
            Self::Logging => "logging",
            Self::Metrics => "metrics",
        }
    }

    /// The group a path under `/manage/` belongs to (`/` is answered by
    /// the spec's own handler).
    pub(crate) fn of_path(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("/manage/")?;
        match rest.split('/').next().unwrap_or_default() {
            "health" => Some(Self::Health),
            "version" => Some(Self::Version),
            "spec" => Some(Self::Spec),
            "docs" => Some(Self::Docs),
            "logging" => Some(Self::Logging),
            "metrics" => Some(Self::Metrics),
            _ => None,
        }
    }

    fn known() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

/// A set of [`Endpoint`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Endpoints(u8);

impl Endpoints {
    pub(crate) const ALL: Self = Self(0b11_1111);
    pub(crate) const NONE: Self = Self(0);

    pub(crate) fn contains(self, endpoint: Endpoint) -> bool {
        self.0 & (1 << endpoint as u8) != 0
    }

    fn parse(key: &str, names: &[String]) -> Result<Self, String> {
        let mut set = Self::NONE;
        for name in names {
            let Some(endpoint) = Endpoint::ALL.into_iter().find(|e| e.name() == name) else {
                return Err(format!(
                    "`{key}` names an unknown endpoint {name:?} (known: {})",
                    Endpoint::known()
                ));
            };
            set.0 |= 1 << endpoint as u8;
        }
        Ok(set)
    }
}

/// The `[management]` config section: where the management endpoints
/// answer and who may use them (see the [module
/// docs](super#who-reaches-them) for each key). Registered as a typed
/// [section](crate::config::Config::section) by `#[serve_common::main]`
/// (and by [`serve`](crate::default::actix::serve) otherwise), so a bad
/// value is a start-up error, and a bad edit is refused (the old config
/// stays). `bind`, `expose` and `public` are read when the service
/// starts; the token follows every change.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementSettings {
    /// `management.bind`: the management endpoints' own listener.
    pub bind: Option<String>,
    /// `management.expose`: the endpoints served (default: all).
    pub expose: Option<Vec<String>>,
    /// `management.public`: with `bind`, the endpoints also served on the
    /// service's public listener (default: none).
    pub public: Option<Vec<String>>,
    /// `management.token`: the bearer token changes need.
    pub token: Option<Secret>,
    /// `management.token_file`: a file holding the token instead.
    pub token_file: Option<PathBuf>,
    /// `management.token_for_reads`: reads need the token too.
    #[serde(default)]
    pub token_for_reads: bool,
}

impl std::fmt::Debug for ManagementSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementSettings")
            .field("bind", &self.bind)
            .field("expose", &self.expose)
            .field("public", &self.public)
            .field("token", &self.token)
            .field("token_file", &self.token_file)
            .field("token_for_reads", &self.token_for_reads)
            .finish()
    }
}

/// The SHA-256 of a token: what is kept and compared (in constant time,
/// and the same length whatever was sent).
type Digest = [u8; 32];

fn digest(token: &[u8]) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(token).into()
}

fn same(a: &Digest, b: &Digest) -> bool {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b).into()
}

/// A token file's token: its content without surrounding white space.
fn read_token_file(path: &Path) -> Result<Digest, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read `token_file` {}: {error}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("`token_file` {} is empty", path.display()));
    }
    Ok(digest(token.as_bytes()))
}

/// What tells a token file's versions apart: modification time, size and
/// inode (a rotation by rename changes the inode, one by rewrite the
/// others).
type FileStamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

impl ManagementSettings {
    /// Whether the service can use these settings: known endpoint names,
    /// `public` within `expose`, `docs` with `spec` (the page reads the
    /// document), one of `token` and `token_file` (non-empty, the file
    /// readable), and `token_for_reads` only with a token.
    pub fn validate(&self) -> Result<(), String> {
        let expose = self.exposed()?;
        let public = self.public_endpoints()?;
        if let Some(outside) = Endpoint::ALL
            .into_iter()
            .find(|e| public.contains(*e) && !expose.contains(*e))
        {
            return Err(format!(
                "`public` names {:?}, which `expose` leaves out",
                outside.name()
            ));
        }
        for (set, key) in [(expose, "expose"), (public, "public")] {
            if set.contains(Endpoint::Docs) && !set.contains(Endpoint::Spec) {
                return Err(format!(
                    "`{key}` names \"docs\" without \"spec\": the docs page reads the document"
                ));
            }
        }
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err("set one of `token` and `token_file`, not both".to_owned());
            }
            (Some(token), None) if token.expose().trim().is_empty() => {
                return Err("`token` is empty".to_owned());
            }
            (None, Some(path)) => {
                read_token_file(path)?;
            }
            (None, None) if self.token_for_reads => {
                return Err("`token_for_reads` needs `token` or `token_file`".to_owned());
            }
            _ => {}
        }
        if self.bind.as_deref().is_some_and(|b| b.trim().is_empty()) {
            return Err("`bind` is empty".to_owned());
        }
        Ok(())
    }

    /// The endpoints `expose` names (all when it is not set).
    pub(crate) fn exposed(&self) -> Result<Endpoints, String> {
        match &self.expose {
            None => Ok(Endpoints::ALL),
            Some(names) => Endpoints::parse("expose", names),
        }
    }

    /// The endpoints `public` names (none when it is not set).
    pub(crate) fn public_endpoints(&self) -> Result<Endpoints, String> {
        match &self.public {
            None => Ok(Endpoints::NONE),
            Some(names) => Endpoints::parse("public", names),
        }
    }

    /// Whether a token is configured.
    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }

    /// Registers the section on `config`.
    pub fn register(config: &Config) -> Result<Section<Self>, ConfigError> {
        config.section_with("management", Self::validate)
    }

    /// The section on the global config, registered once.
    pub(crate) fn live() -> Result<Section<Self>, ConfigError> {
        static LIVE: OnceCell<Section<ManagementSettings>> = OnceCell::new();
        LIVE.get_or_try_init(|| Self::register(crate::config::config()))
            .cloned()
    }
}

/// The token rules of one version of the settings.
struct Rules {
    settings: Arc<ManagementSettings>,
    /// The token's digest; `Err` when it cannot be known (the file went
    /// unreadable): what needs a token is then refused.
    token: Result<Option<Digest>, String>,
    /// The token file's stamp, taken before it was read.
    file_stamp: FileStamp,
}

impl Rules {
    fn of(settings: Arc<ManagementSettings>) -> Self {
        let (token, file_stamp) = match (&settings.token, &settings.token_file) {
            (Some(token), _) => (Ok(Some(digest(token.expose().trim().as_bytes()))), None),
            (None, Some(path)) => {
                // Stamp first: a rotation during the read shows as a change.
                let stamp = stamp(path);
                (read_token_file(path).map(Some), stamp)
            }
            (None, None) => (Ok(None), None),
        };
        Self {
            settings,
            token,
            file_stamp,
        }
    }

    /// Whether the token file changed since it was read (a rotated
    /// secret), or could not be read then (it may be back).
    fn stale(&self) -> bool {
        self.settings
            .token_file
            .as_deref()
            .is_some_and(|path| self.token.is_err() || stamp(path) != self.file_stamp)
    }
}

/// What [`Gate::judge`] decides.
pub(crate) enum Verdict {
    /// Serve it (or let the router answer 404/405).
    Pass,
    /// Not served on this listener: the answer of an unknown route.
    NotFound,
    /// Refused, with this answer.
    Refused(HttpResponse),
}

/// The rules of one service: which listener serves what, and the token.
pub(crate) struct Gate {
    /// The management listener's address, when it has its own.
    management: Option<SocketAddr>,
    expose: Endpoints,
    public: Endpoints,
    section: Option<Section<ManagementSettings>>,
    rules: Mutex<Arc<Rules>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("management", &self.management)
            .field("expose", &self.expose)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// The gate of a service whose management listener (if it has one)
    /// listens on `management`, following the global config's section.
    /// Settings that cannot be read expose every endpoint and refuse
    /// everything that needs a token.
    pub(crate) fn new(management: Option<SocketAddr>) -> Self {
        match ManagementSettings::live() {
            Ok(section) => {
                let settings = section.get();
                Self {
                    management,
                    expose: settings.exposed().unwrap_or(Endpoints::ALL),
                    public: settings.public_endpoints().unwrap_or(Endpoints::NONE),
                    rules: Mutex::new(Arc::new(Rules::of(settings))),
                    section: Some(section),
                }
            }
            Err(error) => Self {
                management,
                expose: Endpoints::ALL,
                public: Endpoints::NONE,
                section: None,
                rules: Mutex::new(Arc::new(Rules {
                    settings: Arc::default(),
                    token: Err(format!("the [management] config is invalid: {error}")),
                    file_stamp: None,
                })),
            },
        }
    }

    /// The endpoints this service mounts.
    pub(crate) fn exposed(&self) -> Endpoints {
        self.expose
    }

    /// Whether `/` is the OpenAPI document: `spec` is exposed, and served
    /// on the public listener (no management listener, or `public` names
    /// it). Otherwise `/` is left to the application (or 404) on every
    /// listener, any method.
    pub(crate) fn serves_root(&self) -> bool {
        self.expose.contains(Endpoint::Spec)
            && (self.management.is_none() || self.public.contains(Endpoint::Spec))
    }

    fn rules(&self) -> Arc<Rules> {
        let mut rules = self.rules.lock();
        if let Some(section) = &self.section {
            let current = section.get();
            if !Arc::ptr_eq(&current, &rules.settings) || rules.stale() {
                *rules = Arc::new(Rules::of(current));
            }
        }
        rules.clone()
    }

    fn on_management_listener(&self, request: &HttpRequest) -> bool {
        self.management == Some(request.app_config().local_addr())
    }

    /// Decides a request to a management path (`endpoint` is the group it
    /// belongs to, `None` for another path under `/manage/`).
    pub(crate) fn judge(&self, request: &HttpRequest, endpoint: Option<Endpoint>) -> Verdict {
        let on_management = self.on_management_listener(request);
        if self.management.is_some()
            && !on_management
            && !endpoint.is_some_and(|e| self.public.contains(e))
        {
            return Verdict::NotFound;
        }
        if endpoint.is_some_and(|e| !self.expose.contains(e)) {
            // Not mounted: the router answers 404.
            return Verdict::Pass;
        }
        let mutating = !matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        // A read: one lock-free look at the settings, unless reads need
        // the token.
        if !mutating
            && !self
                .section
                .as_ref()
                .is_some_and(|s| s.read().token_for_reads)
        {
            return Verdict::Pass;
        }
        let rules = self.rules();
        let local = request.app_config().local_addr();
        match &rules.token {
            Err(reason) => refuse(
                request,
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the management token cannot be checked: {reason}"),
                "the token cannot be checked",
            ),
            Ok(Some(expected)) => match bearer(request) {
                None => refuse(
                    request,
                    StatusCode::UNAUTHORIZED,
                    "this management request needs the header `Authorization: Bearer <token>` \
                     (the token of config `management.token`)"
                        .to_owned(),
                    "no bearer token",
                ),
                Some(given) if same(&digest(given.as_bytes()), expected) => Verdict::Pass,
                Some(_) => refuse(
                    request,
                    StatusCode::FORBIDDEN,
                    "the bearer token is not the management token".to_owned(),
                    "a wrong bearer token",
                ),
            },
            Ok(None) if !mutating || on_management || local.ip().is_loopback() => Verdict::Pass,
            Ok(None) => refuse(
                request,
                StatusCode::FORBIDDEN,
                format!(
                    "management changes are refused on {local}, which is not a loopback \
                     address, without a token: set config `management.token` (or \
                     `management.token_file`) and send `Authorization: Bearer <token>`, or \
                     serve the management endpoints on a listener of their own with \
                     `management.bind` (such as \"127.0.0.1:9000\")"
                ),
                "changes need a token off loopback",
            ),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(request: &HttpRequest) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// At most [`LOGGED_PER_WINDOW`] refusals are logged per
/// [`LOG_WINDOW`]; the next line logged says how many were not.
const LOG_WINDOW: Duration = Duration::from_secs(10);
const LOGGED_PER_WINDOW: u32 = 5;

struct Throttle {
    since: Option<Instant>,
    logged: u32,
    skipped: u64,
}

static THROTTLE: Mutex<Throttle> = Mutex::new(Throttle {
    since: None,
    logged: 0,
    skipped: 0,
});

fn refuse(request: &HttpRequest, status: StatusCode, message: String, reason: &str) -> Verdict {
    let (log, skipped) = {
        let mut throttle = THROTTLE.lock();
        let now = Instant::now();
        let mut skipped = 0;
        if throttle
            .since
            .is_none_or(|since| now.duration_since(since) >= LOG_WINDOW)
        {
            skipped = std::mem::take(&mut throttle.skipped);
            throttle.since = Some(now);
            throttle.logged = 0;
        }
        let log = throttle.logged < LOGGED_PER_WINDOW;
        if log {
            throttle.logged += 1;
        } else {
            throttle.skipped += 1;
        }
        (log, skipped)
    };
    if skipped > 0 {
        tracing::warn!(
            "{skipped} more refused management requests were not logged (at most \
             {LOGGED_PER_WINDOW} every {}s)",
            LOG_WINDOW.as_secs()
        );
    }
    if log {
        let peer = request
            .peer_addr()
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        tracing::warn!(
            %peer,
            method = %request.method(),
            path = %request.path(),
            status = status.as_u16(),
            "refused a management request: {reason}"
        );
    }
    let mut response = json_error(status, message);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"management\""),
        );
    }
    Verdict::Refused(response)
}

/// The answer of a path no route serves (the same as for an unknown route).
pub(crate) use crate::default::errors::no_route as not_found;

/// Says at start-up what the management settings leave open or refuse:
/// `public` is the service's listener, `management` its management one.
pub(crate) fn warn_at_start(public: SocketAddr, management: Option<SocketAddr>) {
    let Ok(section) = ManagementSettings::live() else {
        return;
    };
    let settings = section.get();
    if settings.has_token() {
        return;
    }
    let logging = settings
        .exposed()
        .is_ok_and(|e| e.contains(Endpoint::Logging));
    match management {
        None if logging && !public.ip().is_loopback() => tracing::warn!(
            "management changes (POST /manage/logging/...) are refused: the service listens \
             on {public}, not a loopback address, and neither `management.bind` nor \
             `management.token` is set"
        ),
        Some(management) if logging && !management.ip().is_loopback() => tracing::warn!(
            "the management endpoints listen on {management}, not a loopback address, \
             without `management.token`: whoever reaches it can change the log levels"
        ),
        _ => {}
    }
}

/// The middleware applying a [`Gate`] to every request: a path under
/// `/manage/` is judged; on the management listener anything else is 404.
#[derive(Clone, Debug)]
pub(crate) struct ManagementGate(pub(crate) Arc<Gate>);

impl<S, B> Transform<S, ServiceRequest> for ManagementGate
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = ManagementGateService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ManagementGateService {
            service,
            gate: self.0.clone(),
        }))
    }
}

pub(crate) struct ManagementGateService<S> {
    service: S,
    gate: Arc<Gate>,
}

impl<S, B> Service<ServiceRequest> for ManagementGateService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = GateFuture<S::Future, B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        // The path the router matches: percent-decoded (`/%6Danage/...`
        // is `/manage/...` to it), not the raw `request.path()`.
        let path = request.match_info().as_str();
        let managed = path == "/manage" || path.starts_with("/manage/");
        let verdict = if managed {
            self.gate.judge(request.request(), Endpoint::of_path(path))
        } else if self.gate.on_management_listener(request.request())
            && !(path == "/" && self.gate.serves_root())
        {
            // `/`, when it is the document's, has its own check.
            Verdict::NotFound
        } else {
            Verdict::Pass
        };
        let response = match verdict {
            Verdict::Pass => {
                return GateFuture::Pass {
                    future: self.service.call(request),
                }
            }
            Verdict::NotFound => not_found(request.request()),
            Verdict::Refused(response) => response,
        };
        GateFuture::Answered {
            response: Some(request.into_response(response)),
            body: PhantomData,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, or the gate's.
    #[project = GateFutureProjection]
    pub(crate) enum GateFuture<F, B> {
        Pass { #[pin] future: F },
        Answered { response: Option<ServiceResponse<BoxBody>>, body: PhantomData<B> },
    }
}

impl<F, B> Future for GateFuture<F, B>
where
    F: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
    B: MessageBody,
{
    type Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GateFutureProjection::Pass { future } => future
                .poll(cx)
                .map(|result| result.map(ServiceResponse::map_into_left_body)),
            GateFutureProjection::Answered { response, .. } => Poll::Ready(
                response
                    .take()
                    .map(ServiceResponse::map_into_right_body)
                    .ok_or_else(|| actix_web::error::ErrorInternalServerError("polled twice")),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> ManagementSettings {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn paths_belong_to_their_endpoint() {
        assert_eq!(Endpoint::of_path("/manage/health"), Some(Endpoint::Health));
        assert_eq!(Endpoint::of_path("/manage/docs"), Some(Endpoint::Docs));
        assert_eq!(
            Endpoint::of_path("/manage/docs/swagger-ui.css"),
            Some(Endpoint::Docs)
        );
        assert_eq!(
            Endpoint::of_path("/manage/logging/targets"),
            Some(Endpoint::Logging)
        );
        assert_eq!(Endpoint::of_path("/manage/spec"), Some(Endpoint::Spec));
        assert_eq!(Endpoint::of_path("/manage/healthz"), None);
        assert_eq!(Endpoint::of_path("/health"), None);
    }

    #[test]
    fn settings_are_checked() {
        assert!(settings("").validate().is_ok());
        let unknown = settings("expose = [\"health\", \"metric\"]")
            .validate()
            .unwrap_err();
        assert!(
            unknown.contains("\"metric\"") && unknown.contains("health, version, spec"),
            "{unknown}"
        );
        let outside = settings("expose = [\"health\"]\npublic = [\"version\"]")
            .validate()
            .unwrap_err();
        assert!(outside.contains("\"version\""), "{outside}");
        assert!(settings("expose = [\"docs\"]").validate().is_err());
        assert!(settings("token = \"a\"\ntoken_file = \"/x\"")
            .validate()
            .is_err());
        assert!(settings("token = \" \"").validate().is_err());
        assert!(settings("token_for_reads = true").validate().is_err());
        let missing = settings("token_file = \"/nonexistent/token\"")
            .validate()
            .unwrap_err();
        assert!(missing.contains("/nonexistent/token"), "{missing}");
        assert!(toml::from_str::<ManagementSettings>("tokn = \"a\"").is_err());
    }

    #[test]
    fn tokens_compare_by_digest_and_file_tokens_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        assert!(same(&read_token_file(&path).unwrap(), &digest(b"s3cr3t")));
        assert!(!same(&digest(b"s3cr3t"), &digest(b"s3cr3")));
        std::fs::write(&path, "\n").unwrap();
        assert!(read_token_file(&path).unwrap_err().contains("empty"));
        let shown = format!("{:?}", settings("token = \"s3cr3t\""));
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
