//! The little HTTP/1.1 the endpoint speaks: one request per connection (`Connection:
//! close`), GET and HEAD only, a request head of at most [`MAX_HEAD`] bytes read under a
//! timeout, no body. Parsing is a pure function of the bytes, so garbage of any shape is
//! tested without a socket.

use std::io::{self, Read, Write};

/// The most a request head (request line and headers) may take.
pub const MAX_HEAD: usize = 8 * 1024;

/// Why a request is answered with an error status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("the client sent nothing complete in time")]
    Timeout,
    #[error("method {0} not allowed (GET and HEAD only)")]
    MethodNotAllowed(String),
    #[error("HTTP version not supported")]
    Version,
    #[error("not found")]
    NotFound,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::TooLarge => 431,
            HttpError::Timeout => 408,
            HttpError::MethodNotAllowed(_) => 405,
            HttpError::Version => 505,
            HttpError::NotFound => 404,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// A request as the routes see it: the method and the decoded path (no query string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub path: String,
}

/// Reads a request head: up to the blank line, at most [`MAX_HEAD`] bytes. A read timeout
/// set on the stream ends it with [`HttpError::Timeout`].
pub fn read_head(stream: &mut impl Read) -> Result<Vec<u8>, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(HttpError::BadRequest("the connection closed before the request ended")),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Err(HttpError::Timeout),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HttpError::BadRequest("the connection failed")),
        };
        // Look for the end only across what is new (and the 3 bytes before it).
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            buf.truncate(from + end);
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::TooLarge);
        }
    }
}

/// Where the head ends (after `\r\n\r\n`, or a bare `\n\n` from a hand-typed request).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// Parses a request head.
pub fn parse_head(head: &[u8]) -> Result<Request, HttpError> {
    if head.len() > MAX_HEAD {
        return Err(HttpError::TooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| HttpError::BadRequest("the request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(HttpError::BadRequest("expected `METHOD /path HTTP/1.1`"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::BadRequest("the method is not a token"));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err(HttpError::Version),
        _ => return Err(HttpError::BadRequest("expected HTTP/1.1 or HTTP/1.0")),
    }
    for header in lines.take_while(|l| !l.is_empty()) {
        let Some((name, _)) = header.split_once(':') else { return Err(HttpError::BadRequest("a header line without a colon")) };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(HttpError::BadRequest("a bad header name"));
        }
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        other => return Err(HttpError::MethodNotAllowed(other.chars().take(16).collect())),
    };
    if !target.starts_with('/') {
        return Err(HttpError::BadRequest("expected a path starting with /"));
    }
    let raw = target.split(['?', '#']).next().unwrap_or_default();
    Ok(Request { method, path: percent_decode(raw)? })
}

/// `%XX` decoded; a bad escape, a NUL or a result that is not UTF-8 is refused.
fn percent_decode(raw: &str) -> Result<String, HttpError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else { return Err(HttpError::BadRequest("a bad %-escape in the path")) };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return Err(HttpError::BadRequest("a NUL in the path"));
    }
    String::from_utf8(out).map_err(|_| HttpError::BadRequest("the path is not UTF-8"))
}

/// What a response carries.
pub enum Body {
    Bytes(Vec<u8>),
    /// A file streamed in chunks, `len` bytes.
    File(std::fs::File, u64),
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Body,
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type, body: Body::Bytes(body.into()), headers: Vec::new() }
    }

    pub fn error(e: &HttpError) -> Response {
        let mut r = Response::new(e.status(), "text/plain; charset=utf-8", format!("{} {}\n", e.status(), e));
        if let HttpError::MethodNotAllowed(_) = e {
            r.headers.push(("Allow", "GET, HEAD".into()));
        }
        r
    }

    fn len(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::File(_, n) => *n,
        }
    }

    /// Writes the response; the body only for GET. `keep_going` is asked between chunks of
    /// a file, so that a slow download does not hold up the daemon's stop.
    pub fn write_to(self, out: &mut impl Write, method: Option<Method>, keep_going: &dyn Fn() -> bool) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.len()
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if method == Some(Method::Head) {
            return out.flush();
        }
        match self.body {
            Body::Bytes(b) => out.write_all(&b)?,
            Body::File(f, len) => {
                let mut f = f.take(len);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    if !keep_going() {
                        return Err(io::Error::new(io::ErrorKind::Interrupted, "the daemon is stopping"));
                    }
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n])?;
                }
            }
        }
        out.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_requests_parse_with_query_and_escapes_removed() {
        let r = parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(r, Request { method: Method::Get, path: "/metrics".into() });
        let r = parse_head(b"HEAD /runs/rs_abc/a%20b.txt?x=1 HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(r, Request { method: Method::Head, path: "/runs/rs_abc/a b.txt".into() });
        assert_eq!(parse_head(b"GET / HTTP/1.1\n\n").unwrap().path, "/");
    }

    #[test]
    fn garbage_and_other_methods_get_their_status() {
        let cases: &[(&[u8], u16)] = &[
            (b"", 400),
            (b"\r\n\r\n", 400),
            (b"GET\r\n\r\n", 400),
            (b"GET /\r\n\r\n", 400),
            (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
            (b"get / HTTP/1.1\r\n\r\n", 400),
            (b"GET / FTP/1.0\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET metrics HTTP/1.1\r\n\r\n", 400),
            (b"GET http://x/metrics HTTP/1.1\r\n\r\n", 400),
            (b"GET /%zz HTTP/1.1\r\n\r\n", 400),
            (b"GET /a%00b HTTP/1.1\r\n\r\n", 400),
            (b"GET /%ff%fe HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n : x\r\n\r\n", 400),
            (b"\xff\xfe\x00\x01 / HTTP/1.1\r\n\r\n", 400),
            (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n", 405),
            (b"DELETE /runs/rs_a HTTP/1.1\r\n\r\n", 405),
        ];
        for (bytes, status) in cases {
            let got = parse_head(bytes).map(|_| 200).unwrap_or_else(|e| e.status());
            assert_eq!(got, *status, "{:?}", String::from_utf8_lossy(bytes));
        }
        let r = Response::error(&parse_head(b"PUT / HTTP/1.1\r\n\r\n").unwrap_err());
        assert!(r.headers.contains(&("Allow", "GET, HEAD".into())));
    }

    /// A reader that hands out its bytes a few at a time, then times out (a slow client).
    struct Slow(Vec<u8>, usize);

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "timed out"));
            }
            let n = buf.len().min(3).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn heads_are_read_in_pieces_bounded_and_timed_out() {
        let head = read_head(&mut Slow(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nBODY".to_vec(), 0)).unwrap();
        assert_eq!(head, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(read_head(&mut Slow(b"GET /x HTTP/1.1\r\nHost".to_vec(), 0)), Err(HttpError::Timeout));
        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 3 * MAX_HEAD));
        assert_eq!(read_head(&mut io::Cursor::new(big.clone())), Err(HttpError::TooLarge));
        assert_eq!(parse_head(&big), Err(HttpError::TooLarge));
        assert_eq!(read_head(&mut io::Cursor::new(b"GET / HT".to_vec())).map_err(|e| e.status()), Err(400));
    }

    #[test]
    fn responses_carry_length_and_no_body_for_head() {
        let mut out = Vec::new();
        Response::new(200, "text/plain", "hello").write_to(&mut out, Some(Method::Get), &|| true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 5\r\n") && text.ends_with("\r\n\r\nhello"), "{text}");
        let mut out = Vec::new();
        Response::new(200, "text/plain", "hello").write_to(&mut out, Some(Method::Head), &|| true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 5\r\n") && text.ends_with("\r\n\r\n"), "{text}");
    }
}
