//! The server at the HTTP level, on 127.0.0.1 with a small untrained network: what is
//! refused from the headers alone (a declared length over the limit, an encoded body),
//! clients too slow to send their headers or their body, multipart forms without an
//! image, and that every such answer is JSON. (`serve.rs` beside it has the rest,
//! with a trained model.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use burn_flex::Flex;
use mnist_infer::Classifier;
use mnist_model::CnnConfig;
use mnist_model::artifact::Manifest;
use mnist_serve::{ModelInfo, ServeConfig};
use serde_json::Value;

/// A server of a small untrained network on 127.0.0.1:0 ([`super::serve::Server`]).
struct Server(super::serve::Server);

impl Server {
    fn start(config: ServeConfig) -> Server {
        let network = CnnConfig::new().with_conv1_channels(4).with_conv2_channels(8).with_hidden(16);
        let device = Default::default();
        let model = network.init::<Flex>(7, &device).unwrap();
        let classifier = Classifier::from_model(model, Manifest::from_config(network), &device).unwrap();
        let info = ModelInfo::in_memory(&classifier, "flex");
        Server(super::serve::Server::with(classifier, info, config))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.0.url)
    }
}

impl std::ops::Deref for Server {
    type Target = super::serve::Server;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// One answer read off a raw connection.
struct Answer {
    /// The status line and headers.
    head: String,
    status: u16,
    json: Value,
}

impl Answer {
    fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or_else(|| panic!("no error message in {}", self.json))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `request` on a plain TCP connection and reads one answer: its head, and a body
/// of its `Content-Length` (not waiting for the connection to close).
fn raw(addr: &str, request: &[u8]) -> (TcpStream, Answer) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(request).unwrap();
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    let (head_end, length) = loop {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "the connection closed after {:?}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&buffer[..n]);
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..at]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .expect("a Content-Length");
            break (at + 4, length);
        }
    };
    while bytes.len() < head_end + length {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "the connection closed in the body");
        bytes.extend_from_slice(&buffer[..n]);
    }
    let head = String::from_utf8_lossy(&bytes[..head_end - 4]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = &bytes[head_end..head_end + length];
    let json = serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {head}\n{}", String::from_utf8_lossy(body)));
    (stream, Answer { head, status, json })
}

#[test]
fn a_declared_length_over_the_limit_is_refused_at_once_before_the_body_is_read() {
    let server = Server::start(ServeConfig::new());
    // The length alone: no body follows. Refused at once, not after the request timeout.
    let started = Instant::now();
    let (_stream, answer) = raw(&server.addr, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 50000000\r\n\r\n");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert!(answer.error().contains("the body is 50000000 bytes (its Content-Length); the limit is 8 MiB (8388608 bytes)"), "{}", answer.error());
    assert_eq!(answer.header("connection"), Some("close"));

    // A client that asks first gets the 413 instead of `100 Continue`.
    let (_stream, answer) = raw(
        &server.addr,
        b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 50000000\r\nExpect: 100-continue\r\n\r\n",
    );
    assert!(answer.head.starts_with("HTTP/1.1 413"), "{}", answer.head);
    assert!(answer.error().contains("50000000 bytes"), "{}", answer.error());

    // One within the limit still gets its `100 Continue`, and an answer once it is sent.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n").unwrap();
    let mut buffer = [0u8; 64];
    let n = stream.read(&mut buffer).unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 100 Continue"), "{:?}", String::from_utf8_lossy(&buffer[..n]));

    // A body over the limit that the client sends whole still gets its 413, not a reset
    // connection (the rest of it is read after the answer).
    let small = Server::start(ServeConfig::new().with_body_limit(64 << 10));
    let runtime = super::serve::client_runtime();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        for _ in 0..5 {
            let response = http.post(small.url("/api/predict")).body(vec![0u8; 200 << 10]).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 413);
            let body: Value = response.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("204800 bytes"), "{body}");
        }
    });
}

#[test]
fn an_encoded_body_is_refused_with_415_and_a_busy_server_says_when_to_retry() {
    let server = Server::start(ServeConfig::new());
    let runtime = super::serve::client_runtime();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        for encoding in ["gzip", "br", "deflate, gzip"] {
            let response = http
                .post(server.url("/api/predict"))
                .header("content-type", "image/png")
                .header("content-encoding", encoding)
                .body(vec![0x1f, 0x8b, 8, 0])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 415, "{encoding}");
            assert_eq!(response.headers().get("accept-encoding").unwrap(), "identity");
            let body: Value = response.json().await.unwrap();
            let error = body["error"].as_str().unwrap();
            assert!(error.contains(&format!("Content-Encoding: {encoding}, which this server does not read")), "{error}");
        }
        // `identity` is no encoding.
        let response = http.post(server.url("/api/predict")).header("content-encoding", "identity").body("not a picture").send().await.unwrap();
        assert_eq!(response.status().as_u16(), 422);
    });
    // 503s carry Retry-After: tested where they are made (api.rs), since a full queue
    // cannot be made to happen on demand over HTTP.
}

#[test]
fn stalled_headers_are_dropped_and_a_slow_body_gets_408() {
    let server = Server::start(ServeConfig::new().with_header_timeout_ms(300).with_request_timeout_ms(300));
    // Headers begun and never finished: the connection is closed after the timeout.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(closed.is_ok() || closed.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{closed:?}");
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "closed after {waited:?}");
    // A connection that sends nothing at all, likewise.
    let mut idle = TcpStream::connect(&server.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let _ = idle.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());

    // A body promised and not sent in time: 408, not 503.
    let (_stream, answer) = raw(&server.addr, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n\x89PNG");
    assert_eq!(answer.status, 408, "{}", answer.head);
    assert!(answer.error().contains("the body did not arrive within 300 ms (4 bytes of 5000 received)"), "{}", answer.error());
    assert_eq!(answer.header("retry-after"), None);

    // A whole request on time is answered as ever.
    let (_stream, answer) = raw(&server.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((answer.status, answer.json["status"].as_str()), (200, Some("ok")));
}

#[test]
fn a_form_without_an_image_file_or_an_empty_image_says_so() {
    let server = Server::start(ServeConfig::new());
    let runtime = super::serve::client_runtime();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let post = |content_type: &str, body: &'static str| http.post(server.url("/api/predict")).header("content-type", content_type).body(body);
        let form = "multipart/form-data; boundary=XyZ";
        let cases = [
            // `curl -F name=foo`: a text field, no file.
            (post(form, "--XyZ\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nfoo\r\n--XyZ--\r\n"), "the multipart form has no image file (it holds only text fields: \"name\")"),
            (post(form, "--XyZ--\r\n"), "the multipart form has no image file (it holds no parts)"),
            // `curl -F image=@empty.png`: a file of 0 bytes.
            (
                post(form, "--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"empty.png\"\r\nContent-Type: image/png\r\n\r\n\r\n--XyZ--\r\n"),
                "the uploaded image (form field \"image\", file \"empty.png\") is empty (0 bytes)",
            ),
            // A browser's form with no file picked.
            (
                post(form, "--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"\"\r\nContent-Type: application/octet-stream\r\n\r\n\r\n--XyZ--\r\n"),
                "(form field \"image\", no file chosen) is empty (0 bytes)",
            ),
            // A raw POST of an empty file.
            (post("image/png", ""), "the request body is empty (0 bytes)"),
            // `curl -F a=@one.png -F b=@two.png`: which to classify would be a guess.
            (
                post(form, "--XyZ\r\nContent-Disposition: form-data; name=\"a\"; filename=\"one.png\"\r\n\r\nPNG1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"b\"; filename=\"two.png\"\r\n\r\nPNG2\r\n--XyZ--\r\n"),
                "the multipart form holds more than one file (form fields \"a\" and \"b\"); send one image per request",
            ),
        ];
        for (request, expected) in cases {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            assert_eq!(status, 400, "{body}");
            let error = body["error"].as_str().unwrap();
            assert!(error.contains(expected), "{error:?} does not say {expected:?}");
            assert!(error.contains("expected") || error.contains("send one image"), "{error}");
        }
        // A text field beside the file is no obstacle: the file is read (and this one is
        // not an image).
        let response = post(
            form,
            "--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\nnot a picture\r\n--XyZ--\r\n",
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status().as_u16(), 422);
    });
}

#[test]
fn a_client_slow_to_send_its_body_holds_up_no_other_request() {
    // The longest wait for requests on their way: before, a body still coming in counted
    // as one, and every request waited the whole second for it.
    let server = Server::start(ServeConfig::new().with_batch_wait_us(1_000_000));
    let mut stalled = TcpStream::connect(&server.addr).unwrap();
    stalled.write_all(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n\x89P").unwrap();
    // Give the server the headers before the others come.
    std::thread::sleep(Duration::from_millis(200));
    let pixels: Vec<u8> = (0..784).map(|i| if (300..320).contains(&i) { 255 } else { 0 }).collect();
    let body = serde_json::json!({ "pixels": pixels }).to_string();
    for _ in 0..3 {
        let request = format!("POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let started = Instant::now();
        let (_stream, answer) = raw(&server.addr, request.as_bytes());
        let took = started.elapsed();
        assert_eq!(answer.status, 200, "{}", answer.json);
        assert!(took < Duration::from_millis(700), "answered after {took:?}: it waited for the stalled body");
    }
    drop(stalled);
}

/// A 1,200 x 1,200 BMP (4.3 MB, over axum's own 2 MB default) of a dark bar on white: a
/// "1" the preprocessing finds.
fn large_bmp() -> Vec<u8> {
    let image = image::RgbImage::from_fn(1200, 1200, |x, y| if (560..640).contains(&x) && (200..1000).contains(&y) { image::Rgb([20, 20, 20]) } else { image::Rgb([250, 250, 250]) });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Bmp).unwrap();
    bytes.into_inner()
}

/// A multipart body of one part: its headers (after `Content-Disposition: form-data;`)
/// and bytes.
fn form(disposition: &str, part_headers: &str, bytes: &[u8]) -> Vec<u8> {
    let mut body = format!("--XyZ\r\nContent-Disposition: form-data; {disposition}\r\n{part_headers}\r\n").into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    body
}

#[test]
fn forms_and_labels_are_read_as_clients_send_them() {
    let server = Server::start(ServeConfig::new());
    let bmp = large_bmp();
    assert!(bmp.len() > 4 << 20 && bmp.len() < 8 << 20, "{} bytes", bmp.len());
    let runtime = super::serve::client_runtime();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let post = |content_type: &str, body: Vec<u8>| http.post(server.url("/api/predict")).header("content-type", content_type).body(body);
        let multipart = "multipart/form-data; boundary=XyZ";
        let answers = [
            // An image over 2 MB in a form, within the server's 8 MiB (it had been
            // "unreadable multipart form (Request payload is too large)").
            ("a 4 MB file in a form", post(multipart, form("name=\"image\"; filename=\"big.bmp\"", "Content-Type: image/bmp\r\n", &bmp))),
            // A file part without a file name, known by its type (Python's requests,
            // `files={"image": (None, data, "image/bmp")}`).
            ("a typed part without a file name", post(multipart, form("name=\"image\"", "Content-Type: image/bmp\r\n", &bmp))),
            // An image labelled JSON is read as the image it is.
            ("an image labelled JSON", post("application/json", bmp.clone())),
        ];
        for (what, request) in answers {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            assert_eq!(status, 200, "{what}: {body}");
            assert!(body["class"].is_u64(), "{what}: {body}");
        }
        let refusals = [
            // A form under another label: what changed it is named.
            (
                post("application/json", form("name=\"image\"; filename=\"big.bmp\"", "Content-Type: image/bmp\r\n", &bmp)),
                400,
                "the body is a multipart form (it starts with a boundary line), but its Content-Type is \"application/json\", not multipart/form-data with that boundary",
            ),
            // `curl -d @digit.png`: the file's line breaks stripped, and the way out said.
            (post("application/x-www-form-urlencoded", b"\x89PNG\x1a\n".to_vec()), 422, "send it with `curl --data-binary @FILE`"),
            // A field name of megabytes is shown cut short.
            (post(multipart, form(&format!("name=\"{}\"", "n".repeat(3 << 20)), "", b"text")), 400, &format!("only text fields: \"{}...\"", "n".repeat(64))),
            // A text part is not taken for the image.
            (post(multipart, form("name=\"note\"", "Content-Type: text/plain\r\n", b"hello")), 400, "the multipart form has no image file (it holds only text fields: \"note\")"),
            // An empty file part without a name says so.
            (post(multipart, form("name=\"image\"", "Content-Type: image/png\r\n", b"")), 400, "the uploaded image (form field \"image\", no file name) is empty (0 bytes)"),
        ];
        for (request, status, needle) in refusals {
            let response = request.send().await.unwrap();
            let got = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            let error = body["error"].as_str().unwrap();
            assert_eq!(got, status, "{}", &error[..error.len().min(300)]);
            assert!(error.contains(needle) && error.len() < 2000, "{:?} does not say {needle:?}", &error[..error.len().min(300)]);
        }
    });
}
