//! Outbound HTTP, blocking and typed, on `wasi:http`.
//!
//! ```no_run
//! use toka_guest::http;
//!
//! # fn run() -> Result<(), http::HttpError> {
//! let page = http::get("https://example.com/")?;
//! assert!(page.is_success());
//! let answer = http::Request::post("https://api.example.com/v1/things")
//!     .header("accept", "application/json")
//!     .json(r#"{"name":"x"}"#)
//!     .send()?;
//! println!("{} {}", answer.status(), answer.text()?);
//! # Ok(())
//! # }
//! ```
//!
//! The host decides what leaves: the agent's token must grant `http HOST`
//! (else [`HttpError::Denied`]); every request is journaled, so a task that
//! runs again after a crash gets the recorded response instead of sending
//! the request twice; a secret bound to the host (`secret NAME HOST`) is
//! added by the host and never visible here. Redirects are followed (up
//! to [`Request::max_redirects`], 5 by default), each hop authorized anew.

use std::fmt;
use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

/// Sends a `GET` to `url`.
///
/// # Errors
///
/// See [`HttpError`].
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// Sends a `POST` of `json` (already serialized) to `url`, with
/// `content-type: application/json`.
///
/// # Errors
///
/// See [`HttpError`].
pub fn post_json(url: &str, json: &str) -> Result<Response, HttpError> {
    Request::post(url).json(json).send()
}

/// A request to build and send.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
    max_redirects: u32,
}

impl Request {
    /// A request with any method.
    #[must_use]
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_ascii_uppercase(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
            max_redirects: 5,
        }
    }

    /// A `GET`.
    #[must_use]
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// A `POST`.
    #[must_use]
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets a JSON body (already serialized) and its content type.
    #[must_use]
    pub fn json(self, json: &str) -> Request {
        self.header("content-type", "application/json")
            .body(json.as_bytes())
    }

    /// How long to wait for the response (the host's own limit still
    /// applies).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    /// How many redirects to follow (0: none; a 3xx response is returned).
    #[must_use]
    pub fn max_redirects(mut self, redirects: u32) -> Request {
        self.max_redirects = redirects;
        self
    }

    /// Sends the request, following redirects, and reads the whole
    /// response.
    ///
    /// # Errors
    ///
    /// See [`HttpError`].
    pub fn send(self) -> Result<Response, HttpError> {
        let mut request = self;
        let mut hops = 0;
        loop {
            let response = request.send_once()?;
            let location = match response.status {
                301 | 302 | 303 | 307 | 308 => response.header("location").map(str::to_owned),
                _ => None,
            };
            let Some(location) = location else {
                return Ok(response);
            };
            if hops == request.max_redirects {
                return if request.max_redirects == 0 {
                    Ok(response)
                } else {
                    Err(HttpError::TooManyRedirects {
                        url: request.url,
                        limit: request.max_redirects,
                    })
                };
            }
            hops += 1;
            let next = resolve(&request.url, &location)?;
            if authority(&next) != authority(&request.url) {
                // Credentials the agent set are for the host it named.
                request.headers.retain(|(n, _)| {
                    !["authorization", "cookie", "proxy-authorization"]
                        .iter()
                        .any(|h| n.eq_ignore_ascii_case(h))
                });
            }
            request.url = next;
            // 303, and 301/302 after anything but GET/HEAD, turn into a GET.
            if response.status == 303
                || (matches!(response.status, 301 | 302)
                    && !matches!(request.method.as_str(), "GET" | "HEAD"))
            {
                request.method = "GET".into();
                request.body.clear();
                request
                    .headers
                    .retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
            }
        }
    }

    fn send_once(&self) -> Result<Response, HttpError> {
        let url = Url::parse(&self.url)?;
        let entries: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone().into_bytes()))
            .collect();
        let headers = Fields::from_list(&entries)
            .map_err(|e| HttpError::InvalidRequest(format!("a header is not allowed: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let invalid = |what: &str| HttpError::InvalidRequest(format!("bad {what} in {}", self.url));
        request
            .set_method(&method(&self.method))
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&url.scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(&url.authority))
            .map_err(|()| invalid("host"))?;
        request
            .set_path_with_query(Some(&url.path))
            .map_err(|()| invalid("path"))?;
        let body = request
            .body()
            .map_err(|()| HttpError::Other("the request body was taken".into()))?;
        let options = self.timeout.map(|timeout| {
            let options = RequestOptions::new();
            let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            // A host that does not support one of them still applies its own.
            let _ = options.set_connect_timeout(Some(nanos));
            let _ = options.set_first_byte_timeout(Some(nanos));
            let _ = options.set_between_bytes_timeout(Some(nanos));
            options
        });
        let pending = outgoing_handler::handle(request, options)
            .map_err(|e| HttpError::from_code(e, &self.url))?;
        write_body(body, &self.body)?;
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or_else(|| HttpError::Other("no response after waiting for it".into()))?
            .map_err(|()| HttpError::Other("the response was taken already".into()))?
            .map_err(|e| HttpError::from_code(e, &self.url))?;
        let status = response.status();
        let headers = {
            let fields = response.headers();
            fields
                .entries()
                .into_iter()
                .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
                .collect()
        };
        let incoming = response
            .consume()
            .map_err(|()| HttpError::Other("the response body was taken".into()))?;
        let stream = incoming
            .stream()
            .map_err(|()| HttpError::Other("the response body stream was taken".into()))?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(HttpError::Other(format!(
                        "reading the response failed: {}",
                        e.to_debug_string()
                    )));
                }
            }
        }
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), HttpError> {
    let failed = |what: String| HttpError::Other(format!("writing the request body: {what}"));
    {
        let stream = body
            .write()
            .map_err(|()| failed("the stream was taken".into()))?;
        // `blocking-write-and-flush` takes at most 4096 bytes at a time.
        for chunk in bytes.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| match e {
                    StreamError::Closed => failed("the host closed the stream".into()),
                    StreamError::LastOperationFailed(e) => failed(e.to_debug_string()),
                })?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| failed(format!("{e:?}")))
}

fn method(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    }
}

/// A response, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// The status code.
    #[must_use]
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is 2xx.
    #[must_use]
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (any case).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header, in order.
    #[must_use]
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, as text.
    ///
    /// # Errors
    ///
    /// [`HttpError::NotText`] when it is not UTF-8.
    pub fn text(&self) -> Result<&str, HttpError> {
        std::str::from_utf8(&self.body).map_err(|_| HttpError::NotText)
    }

    /// The body, owned.
    #[must_use]
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL is not an absolute `http://` or `https://` URL.
    InvalidUrl(String),
    /// The request cannot be built (a header the host does not allow, ...).
    InvalidRequest(String),
    /// The host refused to send it: the token does not grant `http HOST`,
    /// or a secret bound to the host is missing (the host's log says which).
    Denied {
        /// The URL.
        url: String,
    },
    /// The host name did not resolve.
    Dns {
        /// The URL.
        url: String,
    },
    /// No connection (refused, reset, unreachable).
    Connection {
        /// The URL.
        url: String,
    },
    /// No response in time.
    Timeout {
        /// The URL.
        url: String,
    },
    /// The response was larger than the host's limit.
    TooLarge {
        /// The limit in bytes, when the host said.
        limit: Option<u64>,
    },
    /// More redirects than allowed.
    TooManyRedirects {
        /// The last URL.
        url: String,
        /// The limit.
        limit: u32,
    },
    /// The body is not UTF-8.
    NotText,
    /// Anything else, in the host's words.
    Other(String),
}

impl HttpError {
    fn from_code(code: ErrorCode, url: &str) -> HttpError {
        let url = url.to_owned();
        match code {
            ErrorCode::HttpRequestDenied => HttpError::Denied { url },
            ErrorCode::DnsTimeout | ErrorCode::DnsError(_) | ErrorCode::DestinationNotFound => {
                HttpError::Dns { url }
            }
            ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionTerminated
            | ErrorCode::DestinationUnavailable
            | ErrorCode::DestinationIpProhibited
            | ErrorCode::DestinationIpUnroutable => HttpError::Connection { url },
            ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout => HttpError::Timeout { url },
            ErrorCode::HttpResponseBodySize(limit) => HttpError::TooLarge { limit },
            ErrorCode::HttpRequestUriInvalid => HttpError::InvalidUrl(url),
            ErrorCode::InternalError(Some(message)) => HttpError::Other(message),
            other => HttpError::Other(format!("{other:?} ({url})")),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidUrl(url) => {
                write!(f, "`{url}` is not an absolute http:// or https:// URL")
            }
            HttpError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            HttpError::Denied { url } => write!(
                f,
                "the host refused to send the request to {url} (does the token grant `http HOST`, and is its secret set?)"
            ),
            HttpError::Dns { url } => write!(f, "the host name of {url} does not resolve"),
            HttpError::Connection { url } => write!(f, "could not connect to {url}"),
            HttpError::Timeout { url } => write!(f, "no response from {url} in time"),
            HttpError::TooLarge { limit: Some(limit) } => {
                write!(
                    f,
                    "the response is larger than the host's limit of {limit} bytes"
                )
            }
            HttpError::TooLarge { limit: None } => {
                write!(f, "the response is larger than the host's limit")
            }
            HttpError::TooManyRedirects { url, limit } => {
                write!(f, "more than {limit} redirects (the last to {url})")
            }
            HttpError::NotText => write!(f, "the response body is not UTF-8 text"),
            HttpError::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for HttpError {}

/// An absolute URL, split as `wasi:http` takes it.
#[derive(Debug)]
struct Url {
    scheme: Scheme,
    authority: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, HttpError> {
        let invalid = || HttpError::InvalidUrl(url.to_owned());
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(invalid());
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return Err(invalid());
        }
        let path = path.split('#').next().unwrap_or("");
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Url {
            scheme,
            authority: authority.to_owned(),
            path,
        })
    }
}

/// The scheme and authority of `url`, lower case (`None` if it is not a
/// URL).
fn authority(url: &str) -> Option<String> {
    let url = Url::parse(url).ok()?;
    Some(format!(
        "{}://{}",
        matches!(url.scheme, Scheme::Https),
        url.authority.to_ascii_lowercase()
    ))
}

/// Where a redirect's `Location` points, from `base`.
fn resolve(base: &str, location: &str) -> Result<String, HttpError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_owned());
    }
    let url = Url::parse(base)?;
    let scheme = match url.scheme {
        Scheme::Https => "https",
        _ => "http",
    };
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{}{location}", url.authority));
    }
    // Relative to the base's directory.
    let dir = url.path.split('?').next().unwrap_or("/");
    let dir = &dir[..=dir.rfind('/').unwrap_or(0)];
    Ok(format!("{scheme}://{}{dir}{location}", url.authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_as_wasi_http_takes_them() {
        let url = Url::parse("https://api.example.com:8443/v1/x?y=1#frag").unwrap();
        assert_eq!(url.authority, "api.example.com:8443");
        assert_eq!(url.path, "/v1/x?y=1");
        assert!(matches!(url.scheme, Scheme::Https));
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        assert_eq!(Url::parse("http://h?q").unwrap().path, "/?q");
        for bad in ["ftp://h/", "h/x", "http:///x", "http://user@h/"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirects_resolve_against_the_request() {
        let base = "http://h:1/a/b?c";
        assert_eq!(resolve(base, "https://o/x").unwrap(), "https://o/x");
        assert_eq!(resolve(base, "//o/x").unwrap(), "http://o/x");
        assert_eq!(resolve(base, "/x").unwrap(), "http://h:1/x");
        assert_eq!(resolve(base, "x").unwrap(), "http://h:1/a/x");
    }
}
