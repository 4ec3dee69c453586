//! OAuth2 client credentials for PKB: the client id and secret go to the token endpoint with HTTP Basic; the
//! token is cached and renewed shortly before it expires (PKB tokens last minutes; there is no refresh token).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::http::{self, MAX_SMALL_BYTES};
use super::transport::TransportError;

/// The longest a token is kept, whatever the endpoint's `expires_in` says (which may be absurd: 2^64-1).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400);

pub struct TokenProvider {
    token_url: String,
    client_id: String,
    secret: SecretString,
    renew_before: Duration,
    /// `None` when the client could not be built (reported at the first call).
    client: Option<reqwest::Client>,
    cached: Mutex<Option<(SecretString, Instant)>>,
}

impl TokenProvider {
    pub fn new(
        token_url: &str,
        client_id: &str,
        secret: SecretString,
        renew_before: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            token_url: token_url.to_string(),
            client_id: client_id.to_string(),
            secret,
            renew_before,
            // A client that follows no redirect: the secret must go to the configured endpoint only.
            client: http::client(timeout).ok(),
            cached: Mutex::new(None),
        }
    }

    /// A valid access token, fetching a new one when the cached one is about to expire.
    pub async fn token(&self) -> Result<String, TransportError> {
        let mut cached = self.cached.lock().await;
        if let Some((t, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(t.expose_secret().to_string());
        }
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| TransportError::Setup("cannot build the HTTP client for the token endpoint".into()))?;
        let resp = client
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(self.secret.expose_secret()))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .map_err(|e| http::network_error("the token endpoint", e))?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(http::redirect_error("the token endpoint", status));
        }
        if !status.is_success() {
            let msg = format!("token endpoint answered {status}; check the client id and secret");
            return Err(match super::retry::classify(status, resp.headers()) {
                super::retry::Answer::Unavailable { retry_after } => {
                    TransportError::Transient { message: msg, retry_after }
                }
                _ => TransportError::Setup(msg),
            });
        }
        let body = http::read_json(resp, MAX_SMALL_BYTES, "the token endpoint's answer").await?;
        let token = body["access_token"]
            .as_str()
            .ok_or_else(|| TransportError::Setup("token endpoint answered without an access_token".into()))?
            .to_string();
        let lifetime = token_lifetime(&body["expires_in"]);
        let now = Instant::now();
        let renew_at = now.checked_add(lifetime.saturating_sub(self.renew_before.min(lifetime / 2))).unwrap_or(now);
        *cached = Some((SecretString::from(token.clone()), renew_at));
        Ok(token)
    }

    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}

/// How long a token lasts: `expires_in` (seconds, a number or a numeric string) clamped to a day; 5 minutes
/// when missing or unreadable.
fn token_lifetime(expires_in: &serde_json::Value) -> Duration {
    let secs = expires_in
        .as_u64()
        .or_else(|| expires_in.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.min(1e9) as u64))
        .or_else(|| expires_in.as_str().and_then(|s| s.trim().parse::<u64>().ok()))
        .unwrap_or(300);
    Duration::from_secs(secs).min(MAX_TOKEN_LIFETIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_expires_in_is_clamped_to_a_day() {
        assert_eq!(token_lifetime(&serde_json::json!(u64::MAX)), MAX_TOKEN_LIFETIME);
        assert_eq!(token_lifetime(&serde_json::json!(1e300)), MAX_TOKEN_LIFETIME);
        assert_eq!(token_lifetime(&serde_json::json!("18446744073709551615")), MAX_TOKEN_LIFETIME);
        assert_eq!(token_lifetime(&serde_json::json!(600)), Duration::from_secs(600));
        assert_eq!(token_lifetime(&serde_json::json!(-5)), Duration::from_secs(300));
    }

    /// A token endpoint answering `expires_in: 2^64-1` used to panic (`Instant + Duration` overflow).
    #[tokio::test]
    async fn a_token_with_a_huge_lifetime_does_not_panic() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = r#"{"access_token":"t","expires_in":18446744073709551615}"#;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let p = TokenProvider::new(
            &format!("http://{addr}/token"),
            "id",
            SecretString::from("s".to_string()),
            Duration::from_secs(60),
            Duration::from_secs(5),
        );
        assert_eq!(p.token().await.unwrap(), "t");
        assert_eq!(p.token().await.unwrap(), "t");
    }
}
