//! A client of the `/v1` API: what the CLI uses when a server holds the
//! data dir, and what the tests drive the server with.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ErrorBody;
use crate::registration::Registration;

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached, or the connection broke.
    #[error("{url}: {reason}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("the server answered {status}: {message} ({code})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error's code, e.g. `not_found`.
        code: String,
        /// The error's message.
        message: String,
    },
    /// The answer is not what the endpoint returns.
    #[error("{url}: an unexpected answer: {reason}")]
    Unexpected {
        /// The URL asked.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The client could not be set up (e.g. an unreadable certificate).
    #[error("{0}")]
    Setup(String),
}

/// A client of one server, authenticated by one operator token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:7878`),
    /// presenting `token`; `certificate` is a PEM certificate to trust
    /// (a server with a self-signed one).
    ///
    /// # Errors
    ///
    /// [`ClientError::Setup`] when the certificate cannot be read.
    pub fn new(base: &str, token: &str, certificate: Option<&Path>) -> Result<Client, ClientError> {
        crate::serve::install_crypto();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(128)
            // Below the 30 s after which the server lets an idle
            // connection go: a request never goes out on one it is
            // closing.
            .pool_idle_timeout(Duration::from_secs(20));
        if let Some(path) = certificate {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))?;
            let certificate = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            http,
        })
    }

    /// The client of the server holding `data_dir`, with its local admin
    /// token, if one registered there and answers. A registration left by
    /// a server that died is `None` (the store's lock tells the rest).
    ///
    /// # Errors
    ///
    /// A registration that cannot be read, or a client that cannot be set
    /// up.
    pub async fn for_data_dir(data_dir: &Path) -> Result<Option<Client>, ClientError> {
        let Some((registration, token)) =
            Registration::read(data_dir).map_err(ClientError::Setup)?
        else {
            return Ok(None);
        };
        let client = Client::new(
            &registration.url,
            &token,
            registration.certificate.as_deref(),
        )?;
        match client.get::<crate::views::Health>("/healthz").await {
            Ok(_) => Ok(Some(client)),
            Err(ClientError::Unreachable { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The base URL.
    #[must_use]
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token it presents.
    #[must_use]
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A request to `path` (under the base URL), authenticated.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// `GET path`, decoded.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// `GET path` as text (e.g. `/metrics`).
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let response = self
            .answer(self.request(reqwest::Method::GET, path))
            .await?;
        let url = response.url().to_string();
        response.text().await.map_err(|e| ClientError::Unreachable {
            url,
            reason: e.to_string(),
        })
    }

    /// `POST path` with a JSON body, decoded.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    /// `PUT path` with a JSON body, decoded.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.request(reqwest::Method::PUT, path).json(body))
            .await
    }

    /// `DELETE path`, the answer decoded.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// `POST path` with raw bytes (a component upload), decoded.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<T, ClientError> {
        self.send(
            self.request(reqwest::Method::POST, path)
                .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                .body(bytes),
        )
        .await
    }

    /// Sends `request` and decodes a successful answer.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.answer(request).await?;
        let url = response.url().to_string();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
            url,
            reason: e.to_string(),
        })
    }

    /// Sends `request`; an error status becomes [`ClientError::Api`].
    async fn answer(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: e
                .url()
                .map_or_else(|| self.base.clone(), ToString::to_string),
            reason: describe(&e),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => ClientError::Api {
                status: status.as_u16(),
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: "http".into(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            },
        })
    }
}

/// A reqwest error with its causes (reqwest's own display stops at the
/// first, e.g. "error sending request").
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
