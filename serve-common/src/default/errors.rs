//! Client mistakes become 4xx responses with a JSON body, never a 500.

use std::collections::BTreeMap;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::pin::Pin;

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use apistos::paths::Response;
use apistos::reference_or::ReferenceOr;
use apistos::{ApiComponent, ApiErrorComponent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The JSON body of every error response: `{"error": "...", "status": 400}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, ApiComponent)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
    /// The HTTP status code, repeated.
    pub status: u16,
}

/// An error a handler returns: a status and a message, rendered as an
/// [`ErrorBody`].
///
/// In the OpenAPI document, an operation returning `Result<_, ApiError>`
/// lists every status `ApiError` has a constructor for (400, 401, 403,
/// 404, 409, 422, 429, 500, 503), each with the [`ErrorBody`] schema; name
/// the ones it gives to list only those:
/// `#[api_operation(summary = "..", error_code = 404, error_code = 409)]`.
///
/// ```
/// use serve_common::default::actix::ApiError;
///
/// fn check(name: &str) -> Result<(), ApiError> {
///     if name.is_empty() {
///         return Err(ApiError::bad_request("`name` must not be empty"));
///     }
///     Ok(())
/// }
/// assert_eq!(check("").unwrap_err().status().as_u16(), 400);
/// ```
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401 Unauthorized: the request did not say who it is (add a
    /// `WWW-Authenticate` header with a middleware if the client needs one).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403 Forbidden: who it is may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409 Conflict: the request contradicts the current state (a
    /// duplicate, a stale version).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 422 Unprocessable Content: well-formed, but its values cannot be
    /// used.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 429 Too Many Requests.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
    }

    /// 503 Service Unavailable: try again later (a dependency is down, the
    /// service is shutting down).
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500 Internal Server Error: the service's fault. `detail` is logged
    /// at ERROR (with the request id); the client is told only that the
    /// request failed and its request id, not the internals.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("{detail}");
        let message = match crate::request_id::get() {
            Some(id) => format!("internal error (request id {})", id.as_str()),
            None => "internal error".to_owned(),
        };
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        json_error(self.status, self.message.clone())
    }
}

/// An error response with an [`ErrorBody`].
pub(crate) fn json_error(status: StatusCode, error: String) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error,
        status: status.as_u16(),
    })
}

/// One documented error response with the [`ErrorBody`] schema.
pub(crate) fn documented(code: u16, description: &str) -> (String, Response) {
    let mut content = BTreeMap::new();
    if let Some((name, _)) = <ErrorBody as ApiComponent>::schema() {
        content.insert(
            "application/json".to_owned(),
            apistos::paths::MediaType {
                schema: Some(ReferenceOr::Reference {
                    _ref: format!("#/components/schemas/{name}"),
                }),
                ..Default::default()
            },
        );
    }
    (
        code.to_string(),
        Response {
            description: description.to_owned(),
            content,
            ..Default::default()
        },
    )
}

/// What the framework answers before or instead of a handler, documented
/// on every operation it applies to (unless the operation documents the
/// status already): a body that is not valid JSON or form data (400), over
/// `server.max_body_bytes` (413), or of another content type (415); a
/// path segment that does not parse as its type (404); a query that does
/// not (400); past `server.request_timeout` (503). Every 2xx response
/// without a description gets one.
pub(crate) fn document_framework_errors(spec: &mut serde_json::Value, request_timeout: bool) {
    use serde_json::Value;
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];
    let Some(Value::Object(paths)) = spec.get_mut("paths") else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        let item_parameters = item.get("parameters").cloned();
        for (method, operation) in item.iter_mut() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let mut add: Vec<(u16, &str)> = Vec::new();
            if let Some(content) = operation
                .pointer("/requestBody/content")
                .and_then(Value::as_object)
            {
                let parsed = content.keys().any(|media| {
                    media.starts_with("application/json")
                        || media.starts_with("application/x-www-form-urlencoded")
                });
                if parsed {
                    add.push((400, "The body does not read as the documented schema"));
                    add.push((415, "The body is not of the documented content type"));
                }
                add.push((
                    413,
                    "The body is over the limit (config server.max_body_bytes)",
                ));
            }
            let parameters = operation
                .get("parameters")
                .into_iter()
                .chain(item_parameters.as_ref())
                .filter_map(Value::as_array)
                .flatten();
            for parameter in parameters {
                // A string parameter always parses.
                let typed = parameter.pointer("/schema/type").and_then(Value::as_str)
                    != Some("string")
                    || parameter.pointer("/schema/format").is_some()
                    || parameter.pointer("/schema/enum").is_some();
                match parameter.get("in").and_then(Value::as_str) {
                    Some("path") if typed => {
                        add.push((404, "A path segment does not parse as its type"))
                    }
                    Some("query") => add.push((400, "The query does not parse as its parameters")),
                    _ => {}
                }
            }
            if request_timeout {
                add.push((
                    503,
                    "The request took longer than config server.request_timeout",
                ));
            }
            let Some(Value::Object(responses)) = operation.get_mut("responses") else {
                continue;
            };
            for (code, description) in add {
                if responses.contains_key(&code.to_string()) {
                    continue;
                }
                let (code, response) = documented(code, description);
                if let Ok(response) = serde_json::to_value(response) {
                    responses.insert(code, response);
                }
            }
            for (code, response) in responses.iter_mut() {
                let empty = response
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty);
                if code.starts_with('2') && empty {
                    response["description"] = Value::from("Success");
                }
            }
        }
    }
}

/// Operation ids used more than once in `spec`, as an error naming the
/// operations (client generators name methods after them, and the
/// OpenAPI specification wants them unique).
pub(crate) fn operation_id_clashes(spec: &serde_json::Value) -> Result<(), String> {
    let mut seen: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    if let Some(paths) = spec.get("paths").and_then(serde_json::Value::as_object) {
        for (path, item) in paths {
            for (method, operation) in item.as_object().into_iter().flatten() {
                if let Some(id) = operation
                    .get("operationId")
                    .and_then(serde_json::Value::as_str)
                {
                    seen.entry(id)
                        .or_default()
                        .push(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
    }
    let clashes: Vec<String> = seen
        .into_iter()
        .filter(|(_, operations)| operations.len() > 1)
        .map(|(id, operations)| format!("`{id}` names {}", operations.join(" and ")))
        .collect();
    if clashes.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "operation ids must be unique in the OpenAPI document: {} (an operation id is its handler's name: give one `#[api_operation(operation_id = \"..\")]`)",
            clashes.join("; ")
        ))
    }
}

/// The statuses [`ApiError`] has constructors for, as documented.
const API_ERROR_STATUSES: [(u16, &str); 9] = [
    (400, "A bad request: the body says what is wrong"),
    (401, "Unauthorized: the request did not say who it is"),
    (403, "Forbidden"),
    (404, "Not found"),
    (409, "A conflict with the current state"),
    (422, "Unprocessable: the values cannot be used"),
    (429, "Too many requests"),
    (500, "The service failed"),
    (503, "Unavailable: try again later"),
];

impl ApiErrorComponent for ApiError {
    fn schemas_by_status_code() -> BTreeMap<String, (String, ReferenceOr<apistos::Schema>)> {
        let mut schemas = BTreeMap::new();
        if let Some(schema) = <ErrorBody as ApiComponent>::schema() {
            for (code, _) in API_ERROR_STATUSES {
                schemas.insert(code.to_string(), schema.clone());
            }
        }
        schemas
    }

    fn error_responses() -> Vec<(String, Response)> {
        API_ERROR_STATUSES
            .iter()
            .map(|&(code, description)| documented(code, description))
            .collect()
    }
}

/// Extractor errors (bad JSON, a missing field, a wrong type, a bad path
/// or query parameter) as 4xx JSON bodies. Installed as app data.
pub(crate) fn extractor_configs(config: &mut apistos::web::ServiceConfig<'_>, max_body: usize) {
    config
        .app_data(web::PayloadConfig::new(max_body))
        .app_data(
            web::JsonConfig::default()
                .limit(max_body)
                .error_handler(|error, _| {
                    let (status, message) = match error {
                        // actix says 400; HTTP's word for it is 415.
                        actix_web::error::JsonPayloadError::ContentType => (
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "expected a JSON body (Content-Type: application/json)".to_owned(),
                        ),
                        other => (other.status_code(), other.to_string()),
                    };
                    ApiError::new(status, message).into()
                }),
        )
        .app_data(web::PathConfig::default().error_handler(|error, _| {
            ApiError::new(StatusCode::NOT_FOUND, error.to_string()).into()
        }))
        .app_data(
            web::QueryConfig::default()
                .error_handler(|error, _| ApiError::bad_request(error.to_string()).into()),
        )
        .app_data(
            web::FormConfig::default()
                .limit(max_body)
                .error_handler(|error, _| {
                    let status = match error {
                        actix_web::error::UrlencodedError::ContentType => {
                            StatusCode::UNSUPPORTED_MEDIA_TYPE
                        }
                        ref other => other.status_code(),
                    };
                    ApiError::new(status, error.to_string()).into()
                }),
        );
}

/// The app's default service: no route matched.
pub(crate) async fn not_found(request: HttpRequest) -> HttpResponse {
    no_route(&request)
}

/// The answer when no route serves `request`.
pub(crate) fn no_route(request: &HttpRequest) -> HttpResponse {
    json_error(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", request.method(), request.path()),
    )
}

/// Gives every error response that is not JSON already an [`ErrorBody`]:
/// actix's empty 404s and 405s (whose `Allow` header stays), extractor and
/// other framework errors (413, 415, ...) whose body was text. Headers are
/// kept; only the body and its content type change.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct JsonErrors;

impl<S, B> Transform<S, ServiceRequest> for JsonErrors
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = JsonErrorsService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(JsonErrorsService { service }))
    }
}

pub(crate) struct JsonErrorsService<S> {
    service: S,
}

type BoxedResponse<B> =
    Pin<Box<dyn Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>>>;

fn is_json(response: &HttpResponse<impl MessageBody>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"))
}

impl<S, B> Service<ServiceRequest> for JsonErrorsService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = BoxedResponse<B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let future = self.service.call(request);
        Box::pin(async move {
            let response = future.await?;
            let status = response.status();
            if !(status.is_client_error() || status.is_server_error())
                || is_json(response.response())
            {
                return Ok(response.map_into_left_body());
            }
            let empty = matches!(
                response.response().body().size(),
                BodySize::None | BodySize::Sized(0)
            );
            let message = match response.response().error() {
                // A framework or handler error whose body is text: its message.
                Some(error) => error.to_string(),
                // A body the handler chose: keep it.
                None if !empty => return Ok(response.map_into_left_body()),
                None => {
                    let request = response.request();
                    match status {
                        StatusCode::METHOD_NOT_ALLOWED => format!(
                            "method {} not allowed on {}",
                            request.method(),
                            request.path()
                        ),
                        StatusCode::NOT_FOUND if request.match_pattern().is_none() => {
                            format!("no route for {} {}", request.method(), request.path())
                        }
                        other => other
                            .canonical_reason()
                            .unwrap_or("request failed")
                            .to_owned(),
                    }
                }
            };
            let (request, original) = response.into_parts();
            let mut replaced = json_error(status, message);
            for (name, value) in original.headers() {
                if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                    replaced.headers_mut().append(name.clone(), value.clone());
                }
            }
            Ok(ServiceResponse::new(request, replaced).map_into_right_body())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constructor_has_its_status_and_every_status_is_documented() {
        let made = [
            ApiError::bad_request("x"),
            ApiError::unauthorized("x"),
            ApiError::forbidden("x"),
            ApiError::not_found("x"),
            ApiError::conflict("x"),
            ApiError::unprocessable("x"),
            ApiError::too_many_requests("x"),
            ApiError::internal("x"),
            ApiError::service_unavailable("x"),
        ];
        let statuses: Vec<u16> = made.iter().map(|e| e.status().as_u16()).collect();
        assert_eq!(statuses, [400, 401, 403, 404, 409, 422, 429, 500, 503]);
        let documented: Vec<String> = <ApiError as ApiErrorComponent>::error_responses()
            .into_iter()
            .map(|(code, response)| {
                assert!(response.content.contains_key("application/json"), "{code}");
                code
            })
            .collect();
        let expected: Vec<String> = statuses.iter().map(u16::to_string).collect();
        assert_eq!(documented, expected);
        let schemas = <ApiError as ApiErrorComponent>::schemas_by_status_code();
        assert_eq!(schemas.keys().cloned().collect::<Vec<_>>(), expected);
    }
}
