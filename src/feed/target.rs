//! Where a partner feed's documents go: a folder (for SFTP pick-up), the partner's FHIR endpoint, or its
//! webhook. One enum, one match arm each: a new kind of target is one variant here.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, FeedConfig};
use crate::deliver::http;
use crate::deliver::retry::{self, Answer};
use crate::deliver::transport::TransportError;

/// One file or request body of a feed document.
#[derive(Debug, Clone)]
pub struct Document {
    /// File name in a folder (also sent to a webhook as `X-Feed-Document`).
    pub name: String,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

pub enum Target {
    Folder(PathBuf),
    /// POST each document (a FHIR transaction Bundle for a FHIR endpoint) to `url`.
    Http {
        url: String,
        client: reqwest::Client,
        token: Option<SecretString>,
        fhir: bool,
    },
}

impl Target {
    pub fn from_config(feed: &FeedConfig, config: &Config) -> anyhow::Result<Target> {
        if let Some(folder) = &feed.folder {
            let folder = config.resolve(folder);
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("feed for {}: creating the folder {}", feed.partner, folder.display()))?;
            return Ok(Target::Folder(folder));
        }
        let (url, fhir) = match (&feed.fhir_url, &feed.webhook_url) {
            (Some(u), _) => (u.clone(), true),
            (None, Some(u)) => (u.clone(), false),
            (None, None) => anyhow::bail!("feed for {}: no folder, fhir_url or webhook_url", feed.partner),
        };
        let token = match &feed.token_file {
            Some(f) => {
                let path = config.resolve(f);
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "feed for {}: reading token_file {} (check its owner and mode)",
                        feed.partner,
                        path.display()
                    )
                })?;
                Some(SecretString::from(text.trim().to_string()))
            }
            None => None,
        };
        let client = http::client(Duration::from_secs(feed.timeout_seconds.max(1)))
            .map_err(|e| anyhow::anyhow!("feed for {}: {e}", feed.partner))?;
        Ok(Target::Http { url: url.trim_end_matches('/').to_string(), client, token, fhir })
    }

    /// For the audit trail and logs (no secrets).
    pub fn describe(&self) -> String {
        match self {
            Target::Folder(p) => format!("folder {}", p.display()),
            Target::Http { url, fhir: true, .. } => format!("FHIR endpoint {url}"),
            Target::Http { url, .. } => format!("webhook {url}"),
        }
    }

    pub fn is_fhir(&self) -> bool {
        matches!(self, Target::Http { fhir: true, .. })
    }

    /// Delivers the documents of one feed document, in order.
    pub async fn send(&self, docs: &[Document]) -> Result<(), TransportError> {
        for doc in docs {
            match self {
                Target::Folder(dir) => write_file(dir, doc)?,
                Target::Http { url, client, token, fhir } => {
                    let what = if *fhir { "the partner's FHIR endpoint" } else { "the partner's webhook" };
                    let mut req = client
                        .post(url)
                        .header(reqwest::header::CONTENT_TYPE, doc.content_type)
                        .header("X-Feed-Document", &doc.name)
                        .body(doc.body.clone());
                    if let Some(t) = token {
                        req = req.bearer_auth(t.expose_secret());
                    }
                    let resp = req.send().await.map_err(|e| http::network_error(what, e))?;
                    let status = resp.status();
                    if status.is_success() {
                        // Drained within a bound, so the connection can be reused and a huge answer is not held.
                        let _ = http::read_body(resp, http::MAX_SMALL_BYTES, what).await;
                        continue;
                    }
                    if status.is_redirection() {
                        return Err(http::redirect_error(what, status));
                    }
                    let answer = retry::classify(status, resp.headers());
                    // The answer's text often quotes what was sent: kept for `last_error`, never logged.
                    let body = http::read_body(resp, http::MAX_SMALL_BYTES, what).await.unwrap_or_default();
                    let text: String = String::from_utf8_lossy(&body).chars().take(2000).collect();
                    let outcome: Option<serde_json::Value> =
                        serde_json::from_slice(&body).ok().filter(|o: &serde_json::Value| o["issue"].is_array());
                    return Err(if let Answer::Unavailable { retry_after } = answer {
                        let codes = http::issue_codes(outcome.as_ref());
                        let codes = if codes.is_empty() {
                            String::new()
                        } else {
                            format!(" (issue codes: {})", codes.join(", "))
                        };
                        TransportError::Unavailable {
                            message: format!("{what} answered {status}{codes}"),
                            detail: text,
                            retry_after,
                        }
                    } else {
                        TransportError::Rejected { status: status.as_u16(), message: text, outcome }
                    });
                }
            }
        }
        Ok(())
    }
}

/// Writes a document whole under a random temporary name, then renames it into place, so a partner's pick-up
/// job never sees half a file, and nothing planted in the folder (which the partner's account can write) is
/// written through. Owner and group may read it (the SFTP account is usually in the group).
fn write_file(dir: &std::path::Path, doc: &Document) -> Result<(), TransportError> {
    if doc.name.is_empty() || doc.name.contains('/') || doc.name.starts_with('.') {
        return Err(TransportError::Rejected {
            status: 0,
            message: format!("feed document name {:?} is not a plain file name", doc.name),
            outcome: None,
        });
    }
    crate::ops::files::write_atomic(&dir.join(&doc.name), &doc.body, 0o640, crate::ops::files::Existing::Replace)
        .map_err(|e| TransportError::Transient {
            message: format!("writing feed file {} in {}: {e}", doc.name, dir.display()),
            retry_after: None,
        })
}
