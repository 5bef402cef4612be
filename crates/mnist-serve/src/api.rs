//! The HTTP routes: the page, `POST /api/predict`, `GET /api/model`, `GET /healthz`, and
//! the JSON answer every error gets.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use mnist_infer::{Pixels, Prediction};
use serde::Serialize;
use serde_json::{Value, json};

use crate::batcher::{Batcher, Refusal};
use crate::{ModelInfo, ServeConfig, page};

/// What the name of an uploaded image is in error messages (the predict command names the
/// file; a request has none).
pub const UPLOAD: &str = "the uploaded image";

/// What `POST /api/predict` takes, for error messages.
const EXPECTED_BODY: &str = "expected an image file (PNG, JPEG, GIF, BMP, TIFF, WebP or PNM) as the body, a multipart form with one, or JSON {\"pixels\": [784 integers 0-255]}";

#[derive(Clone)]
struct AppState {
    batcher: Batcher,
    info: Arc<ModelInfo>,
    body_limit: usize,
    timeout: Duration,
    /// One permit per image being decoded, as many as there are cores: a decoded image may
    /// take up to `MAX_ALLOC` (256 MiB), and decoding more at once than the cores run only
    /// adds memory (and makes every one of them late).
    decodes: Arc<tokio::sync::Semaphore>,
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong and what was expected, for people.
    pub message: String,
    /// Headers of the answer beside `Content-Type` (`Retry-After`, `Connection: close`,
    /// ...).
    /// (Boxed: an error is returned on every path, and a map inline made it 128 bytes.)
    pub headers: Box<HeaderMap>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), headers: Box::default() }
    }

    fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.headers.insert(name, HeaderValue::from_static(value));
        self
    }

    /// A 503 to try again after: busy or overloaded, not broken.
    fn retry_later(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).with_header(header::RETRY_AFTER, RETRY_AFTER_S)
    }

    /// Answered before the body was read (or while it was): the connection is not kept
    /// alive, since what is left of the body is not read (see `discard`).
    fn closing(self) -> Self {
        self.with_header(header::CONNECTION, "close")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        response.headers_mut().extend(*self.headers);
        response
    }
}

/// The `Retry-After` of a 503, in seconds: a full queue drains in well under a second.
const RETRY_AFTER_S: &str = "1";

/// The router of the whole service.
pub(crate) fn router(batcher: Batcher, info: Arc<ModelInfo>, config: &ServeConfig) -> Router {
    let state = AppState {
        batcher,
        info,
        body_limit: config.body_limit,
        timeout: Duration::from_millis(config.request_timeout_ms),
        decodes: Arc::new(tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))),
    };
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        // The body limit is the server's own (`read_body`): without this, axum's default
        // of 2 MB applied again to a multipart form, and a 3 MB photo within the 8 MiB
        // limit was refused as "unreadable".
        .route("/api/predict", post(predict).layer(axum::extract::DefaultBodyLimit::disable()))
        .route("/api/model", get(model))
        .route("/healthz", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // A bug that panics in a handler answers 500 with JSON; the server goes on.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|panic: Box<dyn std::any::Any + Send>| {
            let message = crate::batcher::panic_message(panic.as_ref());
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
        }))
}

/// The answer to `POST /api/predict`.
#[derive(Debug, Serialize)]
struct Answer<'a> {
    class: usize,
    label: String,
    probabilities: [f32; 10],
    /// The 28x28 image the network saw, row by row.
    input: &'a [u8],
    model: ModelSummary<'a>,
}

#[derive(Debug, Serialize)]
struct ModelSummary<'a> {
    name: &'a str,
    dataset: Option<&'a str>,
    backend: &'a str,
}

async fn predict(State(state): State<AppState>, request: Request) -> Response {
    match answer(&state, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn answer(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + state.timeout;
    let (parts, body) = request.into_parts();
    // What the headers alone refuse is answered before any of the body is read (and, to
    // `Expect: 100-continue`, instead of `100 Continue`).
    if let Err(refused) = check_headers(&parts.headers, state.body_limit) {
        discard(body, &parts.headers, state.body_limit, state.timeout);
        return Err(refused.closing());
    }
    let bytes = read_body(&parts.headers, body, state.body_limit, deadline, state.timeout).await?;
    // From here until its image is queued, the inference thread may wait for this one:
    // only once its body is in, so that a client slow to send it (or stalled, until its
    // timeout) does not hold every batch for the whole wait.
    let arriving = state.batcher.arriving();
    let work = async {
        let kind = Kind::of(&parts.headers, &bytes);
        // A multipart form under another `Content-Type` (`curl -F image=@digit.png -H
        // 'Content-Type: application/json'`) has lost the boundary that splits it.
        if !matches!(kind, Kind::Multipart) && looks_multipart(&bytes) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is a multipart form (it starts with a boundary line), but its Content-Type is {}, not multipart/form-data with that boundary: leave out the header that changed it (curl -F sets the form's own); {EXPECTED_BODY}",
                    content_type_of(&parts.headers)
                ),
            ));
        }
        let input = match kind {
            Kind::Json => pixels_from_json(&bytes)?,
            Kind::Multipart => {
                let image = image_from_multipart(Request::from_parts(parts, Body::from(bytes))).await?;
                preprocess(state, image).await?
            }
            Kind::Image => preprocess(state, bytes).await.map_err(|mut e| {
                // `curl -d @digit.png` sends the file as a form, its line breaks stripped.
                if e.status == StatusCode::UNPROCESSABLE_ENTITY && essence(&parts.headers) == "application/x-www-form-urlencoded" {
                    e.message.push_str("; the body came as application/x-www-form-urlencoded, as `curl -d @FILE` sends a file with its line breaks stripped: send it with `curl --data-binary @FILE`");
                }
                e
            })?,
        };
        let prediction = state.batcher.predict(input, arriving).await.map_err(refusal)?;
        Ok(axum::Json(reply(&state.info, &input, &prediction)).into_response())
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(answer) => answer,
        Err(_) => Err(ApiError::retry_later(format!(
            "no answer within {} ms of the request's arrival: the server is overloaded; try again",
            state.timeout.as_millis()
        ))),
    }
}

fn reply<'a>(info: &'a ModelInfo, input: &'a Pixels, prediction: &Prediction) -> Answer<'a> {
    Answer {
        class: prediction.digit,
        label: info.class_name(prediction.digit),
        probabilities: prediction.probabilities,
        input,
        model: ModelSummary {
            name: &info.name,
            dataset: info.dataset.as_deref(),
            backend: &info.backend,
        },
    }
}

fn refusal(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Busy(queue) => {
            ApiError::retry_later(format!("the server is busy: {queue} images are already waiting to be classified; try again shortly"))
        }
        Refusal::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"),
        Refusal::Failed(message) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}

/// How the body of `POST /api/predict` is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Multipart,
    /// An encoded image, whatever the `Content-Type` says: the decoder reads the format
    /// from the bytes.
    Image,
}

impl Kind {
    fn of(headers: &HeaderMap, body: &[u8]) -> Kind {
        let essence = essence(headers);
        if essence == "application/json" || essence.ends_with("+json") {
            // An image labelled JSON (`curl -H 'Content-Type: application/json'
            // --data-binary @digit.png`) is read as the image it is, as any other label
            // is: no JSON text starts as an image format does.
            if image::guess_format(body).is_ok() { Kind::Image } else { Kind::Json }
        } else if essence == "multipart/form-data" {
            Kind::Multipart
        } else if (essence.is_empty() || essence == "application/x-www-form-urlencoded" || essence.starts_with("text/"))
            && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        {
            // `curl -d '{"pixels": ...}'` sends JSON labelled as a form.
            Kind::Json
        } else {
            Kind::Image
        }
    }
}

/// The `Content-Type` without its parameters, in lower case ("" when there is none).
fn essence(headers: &HeaderMap) -> String {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// The `Content-Type` as a message names it.
fn content_type_of(headers: &HeaderMap) -> String {
    match headers.get(header::CONTENT_TYPE) {
        None => "not given".to_string(),
        Some(value) => match value.to_str() {
            Ok(text) => format!("{:?}", shown(text)),
            Err(_) => "not text".to_string(),
        },
    }
}

/// Whether `body` starts as a multipart form does: `--`, a boundary of 1 to 70 of the
/// characters RFC 2046 allows (no space at its end), then a line break.
fn looks_multipart(body: &[u8]) -> bool {
    let Some(rest) = body.strip_prefix(b"--") else {
        return false;
    };
    let line = rest.iter().position(|&b| b == b'\r' || b == b'\n').map_or(&rest[..0], |end| &rest[..end]);
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(b);
    (1..=70).contains(&line.len()) && line.iter().all(allowed) && line.last() != Some(&b' ')
}

/// What the headers of `POST /api/predict` alone refuse: a body encoded
/// (`Content-Encoding` other than `identity`: 415), or declared over `limit`
/// (`Content-Length`: 413).
fn check_headers(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let encodings: Vec<&str> = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("(not text)").split(','))
        .map(str::trim)
        .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
        .collect();
    if !encodings.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "the body is sent with Content-Encoding: {}, which this server does not read; send it as it is, without Content-Encoding ({EXPECTED_BODY})",
                encodings.join(", ")
            ),
        )
        .with_header(header::ACCEPT_ENCODING, "identity"));
    }
    if let Some(length) = declared_length(headers).filter(|&length| length > limit as u64) {
        return Err(too_large(&format!("{length} bytes (its Content-Length)"), limit));
    }
    Ok(())
}

/// The `Content-Length` of a request (hyper has refused the request if it is not a number).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
}

fn too_large(size: &str, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is {size}; the limit is {} ({limit} bytes)", mebibytes(limit)),
    )
}

/// The whole body, at most `limit` bytes, by `deadline` (else 408). A body found over the
/// limit is answered at once, the rest of it read and dropped after the answer (see
/// `discard`).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize, deadline: tokio::time::Instant, timeout: Duration) -> Result<Bytes, ApiError> {
    let declared = declared_length(headers);
    let mut kept = Vec::with_capacity(declared.map_or(limit, |n| n as usize).min(limit));
    let mut body = body;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                let of = declared.map(|n| format!(" of {n}")).unwrap_or_default();
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body did not arrive within {} ms ({} bytes{of} received); send the whole body at once",
                        timeout.as_millis(),
                        kept.len()
                    ),
                )
                .closing());
            }
        };
        let frame = frame.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")).closing())?;
        let Ok(data) = frame.into_data() else { continue };
        if kept.len() + data.len() > limit {
            discard(body, headers, limit, timeout);
            return Err(too_large(&format!("more than {limit} bytes"), limit).closing());
        }
        kept.extend_from_slice(&data);
    }
    if kept.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("the request body is empty (0 bytes); {EXPECTED_BODY}")));
    }
    Ok(Bytes::from(kept))
}

/// Reads what is left of a refused body and drops it, after the answer, up to
/// `DRAIN_FACTOR` times the limit and for at most `within`; then the connection closes.
/// A server that answers and closes while the client is still sending makes the
/// client's TCP stack reset the connection, and the client sees a broken connection
/// instead of the answer (seen in the API test under load). A client that sent
/// `Expect: 100-continue` has sent nothing and waits for the answer: its body is not
/// asked for (reading it would send `100 Continue`).
fn discard(body: Body, headers: &HeaderMap, limit: usize, within: Duration) {
    let expects = headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects {
        return;
    }
    let cap = (limit as u64).saturating_mul(DRAIN_FACTOR);
    tokio::spawn(async move {
        let mut body = body;
        let mut seen = 0u64;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |data| data.len() as u64);
                if seen > cap {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(within, drain).await;
    });
}

/// How much of a body over the limit is read (and dropped) after the 413, in multiples of
/// the limit (see `discard`).
const DRAIN_FACTOR: u64 = 16;

fn mebibytes(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// `{"pixels": [784 integers 0-255]}`: the network's input as it is, row by row, white
/// (255) ink on black (0), as MNIST's own images; nothing is preprocessed.
fn pixels_from_json(body: &[u8]) -> Result<Pixels, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    const SHAPE: &str = "expected {\"pixels\": [784 integers 0-255]}: the 28x28 image row by row, white (255) ink on black (0) as in MNIST";
    // Strict: a key given twice is refused (serde_json would keep the last silently).
    let text = std::str::from_utf8(body).map_err(|e| bad(format!("the body is not UTF-8 text ({e}); {SHAPE}")))?;
    let value: Value = mnist_model::artifact::json::parse(text).map_err(|e| bad(format!("the body is {e}; {SHAPE}")))?;
    let Value::Object(object) = value else {
        return Err(bad(format!("the JSON body is {}, not an object; {SHAPE}", json_kind(&value))));
    };
    if let Some(other) = object.keys().find(|k| *k != "pixels") {
        return Err(bad(format!("unknown field {other:?}; {SHAPE}")));
    }
    let values = match object.get("pixels") {
        None => return Err(bad(format!("the field \"pixels\" is missing; {SHAPE}"))),
        Some(Value::Array(values)) => values,
        Some(other) => return Err(bad(format!("\"pixels\" is {}, not an array; {SHAPE}", json_kind(other)))),
    };
    if values.len() != 784 {
        let values = match values.len() {
            1 => "1 value".to_string(),
            n => format!("{n} values"),
        };
        return Err(bad(format!("\"pixels\" has {values}; {SHAPE}")));
    }
    let mut pixels = [0u8; 784];
    for (i, (pixel, value)) in pixels.iter_mut().zip(values).enumerate() {
        *pixel = value
            .as_u64()
            .and_then(|v| u8::try_from(v).ok())
            .or_else(|| value.as_f64().filter(|v| v.fract() == 0.0 && (0.0..=255.0).contains(v)).map(|v| v as u8))
            .ok_or_else(|| {
                let hint = if value.as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)) {
                    " (values scaled to 0-1 must be multiplied by 255)"
                } else {
                    ""
                };
                bad(format!("pixels[{i}] (row {}, column {}) is {value}{hint}; {SHAPE}", i / 28, i % 28))
            })?;
    }
    // As an uploaded image without ink is refused, so is a blank input.
    if pixels.iter().all(|&p| p == pixels[0]) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("every one of the 784 pixels is {}: a blank image, no digit to classify; {SHAPE}", pixels[0]),
        ));
    }
    Ok(pixels)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The first file of a multipart form (`curl -F image=@digit.png`): a part with a file
/// name. Text fields (`-F name=foo`) are not images.
async fn image_from_multipart(request: Request) -> Result<Bytes, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let unreadable = |why: String| bad(format!("unreadable multipart form ({why}); {EXPECTED_BODY}"));
    let mut form = Multipart::from_request(request, &()).await.map_err(|e| unreadable(e.body_text()))?;
    let mut fields = Vec::new();
    let mut image: Option<(String, Bytes)> = None;
    while let Some(field) = form.next_field().await.map_err(|e| unreadable(e.body_text()))? {
        let name = shown(field.name().unwrap_or(""));
        // A file part: one with a file name, or with a type other than text (a client
        // may send a file without a name, as Python's requests does for
        // `files={"image": (None, data, "image/png")}`).
        let file_name = field.file_name().map(shown);
        let typed = field.content_type().is_some_and(|t| !t.trim().to_ascii_lowercase().starts_with("text/"));
        if file_name.is_none() && !typed {
            fields.push(format!("{name:?}"));
            continue;
        }
        if let Some((first, _)) = &image {
            // Which one to classify would be a guess: one image, one answer.
            return Err(bad(format!("the multipart form holds more than one file (form fields {first:?} and {name:?}); send one image per request")));
        }
        let bytes = field.bytes().await.map_err(|e| unreadable(e.body_text()))?;
        if bytes.is_empty() {
            let file = match file_name {
                Some(file_name) if !file_name.is_empty() => format!("file {file_name:?}"),
                Some(_) => "no file chosen".to_string(),
                None => "no file name".to_string(),
            };
            return Err(bad(format!("the uploaded image (form field {name:?}, {file}) is empty (0 bytes); {EXPECTED_BODY}")));
        }
        image = Some((name, bytes));
    }
    if let Some((_, bytes)) = image {
        return Ok(bytes);
    }
    let holds = if fields.is_empty() { "no parts".to_string() } else { format!("only text fields: {}", fields.join(", ")) };
    Err(bad(format!(
        "the multipart form has no image file (it holds {holds}): a file part is needed, as `curl -F image=@digit.png` sends; {EXPECTED_BODY}"
    )))
}

/// A form's field or file name as a message shows it: at most [`SHOWN_NAME`] characters,
/// then `...` (a name may be megabytes long).
fn shown(name: &str) -> String {
    match name.char_indices().nth(SHOWN_NAME) {
        Some((at, _)) => format!("{}...", &name[..at]),
        None => name.to_string(),
    }
}

/// The most characters of a form's field or file name a message shows.
const SHOWN_NAME: usize = 64;

/// Decodes and preprocesses an image as `mnist predict` does, off the async runtime.
async fn preprocess(state: &AppState, bytes: Bytes) -> Result<Pixels, ApiError> {
    // Waiting for a permit counts against the request's deadline; the permit is held by
    // the decoding itself, which goes on when the request has timed out meanwhile.
    // (The semaphore is never closed; were it, the server would be stopping.)
    let permit = state.decodes.clone().acquire_owned().await.map_err(|_| refusal(Refusal::Stopped))?;
    let work = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        mnist_infer::preprocess::preprocess_bytes(&bytes, Path::new(UPLOAD))
    });
    match work.await {
        Ok(Ok(pixels)) => Ok(pixels),
        Ok(Err(e)) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
        Err(e) if e.is_panic() => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the preprocessing of this image failed ({}); the server goes on", crate::batcher::panic_message(e.into_panic().as_ref())),
        )),
        Err(_) => Err(refusal(Refusal::Stopped)),
    }
}

async fn model(State(state): State<AppState>) -> Response {
    axum::Json(state.info.as_ref()).into_response()
}

async fn health(State(state): State<AppState>) -> Response {
    let stats = state.batcher.stats();
    axum::Json(json!({
        "status": "ok",
        "images": stats.images.load(Ordering::Relaxed),
        "batches": stats.batches.load(Ordering::Relaxed),
        "largest_batch": stats.largest_batch.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such page: {}; the page is / and the API is POST /api/predict, GET /api/model and GET /healthz", uri.path()),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    let path = request.uri().path().to_string();
    let allowed = if path == "/api/predict" { "POST" } else { "GET, HEAD" };
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {path}; use {allowed}", request.method()),
    )
    .into_response();
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        headers
    }

    #[test]
    fn the_body_kind_follows_the_content_type_and_sniffs_forms() {
        assert_eq!(Kind::of(&headers("application/json; charset=utf-8"), b"{}"), Kind::Json);
        assert_eq!(Kind::of(&headers("multipart/form-data; boundary=x"), b"--x"), Kind::Multipart);
        assert_eq!(Kind::of(&headers("application/x-www-form-urlencoded"), b" {\"pixels\": []}"), Kind::Json);
        assert_eq!(Kind::of(&HeaderMap::new(), b"{\"pixels\": []}"), Kind::Json);
        assert_eq!(Kind::of(&HeaderMap::new(), b"\x89PNG"), Kind::Image);
        // An image labelled with the wrong type is still an image.
        assert_eq!(Kind::of(&headers("text/plain"), b"\xff\xd8\xff"), Kind::Image);
        assert_eq!(Kind::of(&headers("image/png"), b"{not a png"), Kind::Image);
        // So is one labelled JSON; JSON text stays JSON.
        assert_eq!(Kind::of(&headers("application/json"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Kind::Image);
        assert_eq!(Kind::of(&headers("application/json"), b"\xff\xd8\xff\xe0"), Kind::Image);
        assert_eq!(Kind::of(&headers("application/json"), b"[1, 2]"), Kind::Json);
        assert_eq!(Kind::of(&headers("application/json"), b"\xff\xfe"), Kind::Json);
    }

    #[test]
    fn a_form_is_known_by_its_boundary_line_and_names_are_shown_short() {
        assert!(looks_multipart(b"--------------------------d74496d66958873e\r\nContent-Disposition: form-data"));
        assert!(looks_multipart(b"--XyZ\r\n"));
        assert!(looks_multipart(b"--a'()+_,-./:=? b\n"));
        assert!(!looks_multipart(b"--\r\n"), "an empty boundary");
        assert!(!looks_multipart(b"--XyZ \r\n"), "a space at its end");
        assert!(!looks_multipart(&[b"--".as_slice(), &[b'a'; 71], b"\r\n"].concat()), "71 characters");
        assert!(!looks_multipart(b"--a{b}\r\n"));
        assert!(!looks_multipart(b"\x89PNG\r\n"));
        assert!(!looks_multipart(b"{\"pixels\": []}"));
        assert_eq!(shown("image"), "image");
        assert_eq!(shown(&"é".repeat(70)), format!("{}...", "é".repeat(64)));
        assert_eq!(content_type_of(&headers("application/json")), "\"application/json\"");
        assert_eq!(content_type_of(&HeaderMap::new()), "not given");
    }

    #[test]
    fn json_pixels_are_784_integers_and_every_mistake_is_named() {
        let ok: Vec<u32> = (0..784).map(|i| i % 256).collect();
        let pixels = pixels_from_json(json!({ "pixels": ok }).to_string().as_bytes()).unwrap();
        assert_eq!((pixels[0], pixels[255], pixels[256], pixels[783]), (0, 255, 0, 15));
        let floats: Vec<f64> = (0..784).map(|i| f64::from(i % 7) * 12.0).collect();
        assert_eq!(pixels_from_json(json!({ "pixels": floats }).to_string().as_bytes()).unwrap()[5], 60);

        let message = |body: String| {
            let e = pixels_from_json(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            e.message
        };
        assert!(message("{\"pixels\": [1, 2".into()).contains("not valid JSON"));
        assert!(message("[1, 2]".into()).contains("an array, not an object"));
        assert!(message("{}".into()).contains("\"pixels\" is missing"));
        assert!(message("{\"pixels\": \"abc\"}".into()).contains("a string, not an array"));
        assert!(message(json!({ "pixels": vec![0; 783] }).to_string()).contains("has 783 values"));
        assert!(message(json!({ "pixels": [7] }).to_string()).contains("\"pixels\" has 1 value;"));
        assert!(message(json!({ "pixels": vec![0; 784], "label": 3 }).to_string()).contains("unknown field \"label\""));
        let ink = json!(ok).to_string();
        let twice = format!("{{\"pixels\": {ink}, \"pixels\": {ink}}}");
        assert!(message(twice).contains("the key `pixels` appears twice in one object"));
        for blank in [0, 255] {
            let e = pixels_from_json(json!({ "pixels": vec![blank; 784] }).to_string().as_bytes()).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(e.message.contains(&format!("every one of the 784 pixels is {blank}: a blank image")), "{}", e.message);
        }
        let mut values = vec![json!(0); 784];
        values[30] = json!(256);
        assert!(message(json!({ "pixels": values }).to_string()).contains("pixels[30] (row 1, column 2) is 256"));
        values[30] = json!(0.5);
        assert!(message(json!({ "pixels": values }).to_string()).contains("multiplied by 255"));
        values[30] = json!(-1);
        assert!(message(json!({ "pixels": values }).to_string()).contains("is -1"));
        values[30] = json!(null);
        assert!(message(json!({ "pixels": values }).to_string()).contains("is null"));
    }

    #[test]
    fn busy_answers_say_when_to_retry_and_failures_do_not() {
        let busy = refusal(Refusal::Busy(1024)).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers().get(header::RETRY_AFTER).unwrap(), "1");
        assert_eq!(busy.headers().get(header::CONTENT_TYPE).unwrap(), "application/json");
        let overloaded = ApiError::retry_later("no answer within 10000 ms").into_response();
        assert_eq!(overloaded.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let failed = refusal(Refusal::Failed("boom".into())).into_response();
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(failed.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn the_headers_alone_refuse_an_encoded_body_or_a_declared_length_over_the_limit() {
        let with = |pairs: &[(header::HeaderName, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(name.clone(), HeaderValue::from_static(value));
            }
            check_headers(&headers, 1 << 20)
        };
        assert!(with(&[]).is_ok());
        assert!(with(&[(header::CONTENT_LENGTH, "1048576"), (header::CONTENT_ENCODING, "identity")]).is_ok());
        let e = with(&[(header::CONTENT_LENGTH, "1048577")]).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.message, "the body is 1048577 bytes (its Content-Length); the limit is 1 MiB (1048576 bytes)");
        let e = with(&[(header::CONTENT_ENCODING, "identity"), (header::CONTENT_ENCODING, "GZip")]).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.message.starts_with("the body is sent with Content-Encoding: GZip, which this server does not read"), "{}", e.message);
        assert_eq!(e.headers.get(header::ACCEPT_ENCODING).unwrap(), "identity");
    }

    #[test]
    fn limits_read_in_binary_units() {
        assert_eq!(mebibytes(8 << 20), "8 MiB");
        assert_eq!(mebibytes(64 << 10), "64 KiB");
        assert_eq!(mebibytes(1000), "1000 bytes");
    }
}
