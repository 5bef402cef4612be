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
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong and what was expected, for people.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

/// The router of the whole service.
pub(crate) fn router(batcher: Batcher, info: Arc<ModelInfo>, config: &ServeConfig) -> Router {
    let state = AppState {
        batcher,
        info,
        body_limit: config.body_limit,
        timeout: Duration::from_millis(config.request_timeout_ms),
    };
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        .route("/api/predict", post(predict))
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
    let timeout = state.timeout;
    match tokio::time::timeout(timeout, answer(&state, request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => error.into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no answer within {} ms (the server is overloaded, or the body arrived too slowly); try again", timeout.as_millis()),
        )
        .into_response(),
    }
}

async fn answer(state: &AppState, request: Request) -> Result<Response, ApiError> {
    // From here until its image is queued, the inference thread may wait for this one.
    let arriving = state.batcher.arriving();
    let (parts, body) = request.into_parts();
    let bytes = read_body(&parts.headers, body, state.body_limit).await?;
    let input = match Kind::of(&parts.headers, &bytes) {
        Kind::Json => pixels_from_json(&bytes)?,
        Kind::Multipart => {
            let image = image_from_multipart(Request::from_parts(parts, Body::from(bytes))).await?;
            preprocess(image).await?
        }
        Kind::Image => preprocess(bytes).await?,
    };
    let prediction = state.batcher.predict(input, arriving).await.map_err(refusal)?;
    Ok(axum::Json(reply(&state.info, &input, &prediction)).into_response())
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
        Refusal::Busy(queue) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the server is busy: {queue} images are already waiting to be classified; try again shortly"),
        ),
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
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence == "application/json" || essence.ends_with("+json") {
            Kind::Json
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

/// The whole body, at most `limit` bytes.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = |size: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is {size}; the limit is {} ({limit} bytes)", mebibytes(limit)),
        )
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let over = declared.is_some_and(|length| length > limit as u64);
    // A body over the limit is still read (and dropped) up to `DRAIN_FACTOR` times the
    // limit before the answer: a server that answers and closes while the client is still
    // sending makes the client's TCP stack reset the connection, and the client sees a
    // broken connection instead of the 413 (seen in the API test under load). Beyond that,
    // the connection is closed without reading further.
    let cap = (limit as u64).saturating_mul(DRAIN_FACTOR);
    let mut kept = Vec::with_capacity(if over { 0 } else { declared.map_or(limit, |n| n as usize).min(limit) });
    let mut seen = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len() as u64;
        if seen <= limit as u64 && !over {
            kept.extend_from_slice(&data);
        } else if seen > cap {
            break;
        }
    }
    if let Some(length) = declared.filter(|_| over) {
        return Err(too_large(format!("{length} bytes")));
    }
    if seen > limit as u64 {
        return Err(too_large(if seen > cap { "larger".into() } else { format!("{seen} bytes") }));
    }
    if kept.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("the request body is empty; {EXPECTED_BODY}")));
    }
    Ok(Bytes::from(kept))
}

/// How much of a body over the limit is read before the 413 is sent, in multiples of the
/// limit (see `read_body`).
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
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(format!("the body is not valid JSON ({e}); {SHAPE}")))?;
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
        return Err(bad(format!("\"pixels\" has {} values; {SHAPE}", values.len())));
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

/// The first file of a multipart form (`curl -F image=@digit.png`).
async fn image_from_multipart(request: Request) -> Result<Bytes, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let mut form = Multipart::from_request(request, &()).await.map_err(|e| bad(format!("unreadable multipart form ({}); {EXPECTED_BODY}", e.body_text())))?;
    let mut first_field = None;
    while let Some(field) = form.next_field().await.map_err(|e| bad(format!("unreadable multipart form ({}); {EXPECTED_BODY}", e.body_text())))? {
        let is_file = field.file_name().is_some();
        let bytes = field.bytes().await.map_err(|e| bad(format!("unreadable multipart form ({}); {EXPECTED_BODY}", e.body_text())))?;
        if is_file {
            return Ok(bytes);
        }
        first_field.get_or_insert(bytes);
    }
    match first_field {
        Some(bytes) if !bytes.is_empty() => Ok(bytes),
        _ => Err(bad(format!("the multipart form holds no file; {EXPECTED_BODY}"))),
    }
}

/// Decodes and preprocesses an image as `mnist predict` does, off the async runtime.
async fn preprocess(bytes: Bytes) -> Result<Pixels, ApiError> {
    let work = tokio::task::spawn_blocking(move || mnist_infer::preprocess::preprocess_bytes(&bytes, Path::new(UPLOAD)));
    match work.await {
        Ok(Ok(pixels)) => Ok(pixels),
        Ok(Err(e)) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
        Err(e) if e.is_panic() => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the preprocessing of this image failed ({}); the server goes on", crate::batcher::panic_message(e.into_panic().as_ref())),
        )),
        Err(_) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down")),
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
    }

    #[test]
    fn json_pixels_are_784_integers_and_every_mistake_is_named() {
        let ok: Vec<u32> = (0..784).map(|i| i % 256).collect();
        let pixels = pixels_from_json(json!({ "pixels": ok }).to_string().as_bytes()).unwrap();
        assert_eq!((pixels[0], pixels[255], pixels[256], pixels[783]), (0, 255, 0, 15));
        let floats: Vec<f64> = (0..784).map(|_| 12.0).collect();
        assert_eq!(pixels_from_json(json!({ "pixels": floats }).to_string().as_bytes()).unwrap()[5], 12);

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
        assert!(message(json!({ "pixels": vec![0; 784], "label": 3 }).to_string()).contains("unknown field \"label\""));
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
    fn limits_read_in_binary_units() {
        assert_eq!(mebibytes(8 << 20), "8 MiB");
        assert_eq!(mebibytes(64 << 10), "64 KiB");
        assert_eq!(mebibytes(1000), "1000 bytes");
    }
}
