//! The HTTPS fetch of the key set: verified TLS, bounded in time, size and redirects, and
//! the fetched document checked before anyone sees it.

use anyhow::Context;
use reqwest::{Certificate, Client, StatusCode, Url, redirect};

use crate::config::JwksSettings;
use crate::jwks::check::{InvalidKeySet, KeySummary, check_key_set};

/// The largest key set accepted; real ones are a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 3;

/// Why a fetch produced no usable key set.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The whole fetch took longer than `jwks.timeout_ms`.
    #[error("timed out")]
    Timeout,
    /// Connecting, TLS (an untrusted certificate, a wrong host name), redirects or reading
    /// failed; the text is the error chain without the URL.
    #[error("{0}")]
    Network(String),
    /// An answer other than 200 OK.
    #[error("HTTP status {0}")]
    Status(u16),
    /// A body over [`MAX_DOCUMENT_BYTES`].
    #[error("document over {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    /// A body that is not a public key set.
    #[error("{0}")]
    Invalid(#[from] InvalidKeySet),
}

impl FetchError {
    /// A short, bounded name for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Network(_) => "network",
            Self::Status(_) => "status",
            Self::TooLarge => "too_large",
            Self::Invalid(InvalidKeySet::PrivateMember { .. }) => "private_key",
            Self::Invalid(_) => "invalid",
        }
    }

    fn from_reqwest(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            return Self::Timeout;
        }
        // The URL may carry a query string worth keeping out of logs; the host is logged
        // beside the error anyway.
        let error = error.without_url();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Network(text)
    }
}

/// The HTTP client for the key set URL: verified TLS, bounded in time, size and redirects.
#[derive(Debug)]
pub(super) struct Fetcher {
    client: Client,
    url: Url,
    host: String,
}

impl Fetcher {
    /// Builds the client: TLS verified against the platform's roots plus `jwks.ca_file`,
    /// `https://` only (redirects included) unless `jwks.allow_http`. Errors name the key.
    pub(super) fn new(settings: &JwksSettings) -> anyhow::Result<Self> {
        let url = settings.url.as_ref().context("jwks.url: not set")?;
        let url = Url::parse(url.expose()).context("jwks.url: not a URL")?;
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => anyhow::bail!("jwks.url: no host"),
        };
        let mut builder = Client::builder()
            .https_only(!settings.allow_http)
            .redirect(redirect::Policy::limited(MAX_REDIRECTS))
            .timeout(settings.timeout())
            .connect_timeout(settings.timeout())
            .user_agent(concat!("dicom-cache-warmer/", env!("CARGO_PKG_VERSION")));
        if let Some(file) = &settings.ca_file {
            let pem = std::fs::read(file)
                .with_context(|| format!("jwks.ca_file: cannot read {}", file.display()))?;
            let roots = Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("jwks.ca_file: {} is not PEM", file.display()))?;
            anyhow::ensure!(
                !roots.is_empty(),
                "jwks.ca_file: no certificate in {}",
                file.display()
            );
            builder = builder.tls_certs_merge(roots);
        }
        let client = builder
            .build()
            .context("jwks: cannot set up the HTTPS client (no trusted roots?)")?;
        Ok(Self { client, url, host })
    }

    /// The URL's host (and port, when given), for logs.
    pub(super) fn host(&self) -> &str {
        &self.host
    }

    /// Fetches the document and checks it; the bytes are returned as received.
    pub(super) async fn fetch(&self) -> Result<(Vec<u8>, KeySummary), FetchError> {
        let mut response = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .map_err(FetchError::from_reqwest)?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        // Read chunk by chunk so that an endless or oversized body is cut off at the cap.
        let mut document = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(FetchError::from_reqwest)? {
            if document.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge);
            }
            document.extend_from_slice(&chunk);
        }
        let summary = check_key_set(&document)?;
        Ok((document, summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_material_has_its_own_failure_reason() {
        let private = FetchError::Invalid(InvalidKeySet::PrivateMember {
            index: 0,
            member: "d",
        });
        assert_eq!(private.reason(), "private_key");
        assert_eq!(
            FetchError::Invalid(InvalidKeySet::NoKeys).reason(),
            "invalid"
        );
        assert_eq!(FetchError::Status(500).reason(), "status");
        assert_eq!(FetchError::TooLarge.reason(), "too_large");
        assert_eq!(FetchError::Timeout.reason(), "timeout");
    }

    #[test]
    fn a_ca_file_without_certificates_fails_the_start_naming_the_key() {
        let not_pem = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(not_pem.path(), "not a certificate\n").expect("write");
        for file in [not_pem.path(), std::path::Path::new("/nonexistent/ca.pem")] {
            let settings = JwksSettings {
                url: Some("https://idp.example.org/certs".into()),
                ca_file: Some(file.to_owned()),
                ..JwksSettings::default()
            };
            let error = Fetcher::new(&settings).expect_err("refused").to_string();
            assert!(error.starts_with("jwks.ca_file: "), "{error}");
        }
    }
}
