//! OAuth2 client credentials for PKB: the client id and secret go to the token endpoint with HTTP Basic; the
//! token is cached and renewed shortly before it expires (PKB tokens last minutes; there is no refresh token).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::transport::TransportError;

pub struct TokenProvider {
    token_url: String,
    client_id: String,
    secret: SecretString,
    renew_before: Duration,
    client: reqwest::Client,
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
            client: reqwest::Client::builder().timeout(timeout).build().unwrap_or_default(),
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
        let resp = self
            .client
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(self.secret.expose_secret()))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .map_err(|e| TransportError::Transient { message: format!("token endpoint: {e}"), retry_after: None })?;
        let status = resp.status();
        if !status.is_success() {
            let msg = format!("token endpoint answered {status}; check the client id and secret");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                TransportError::Transient { message: msg, retry_after: None }
            } else {
                TransportError::Setup(msg)
            });
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| TransportError::Transient {
            message: format!("token endpoint: unreadable answer: {e}"),
            retry_after: None,
        })?;
        let token = body["access_token"]
            .as_str()
            .ok_or_else(|| TransportError::Setup("token endpoint answered without an access_token".into()))?
            .to_string();
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(300));
        let renew_at = Instant::now() + lifetime.saturating_sub(self.renew_before.min(lifetime / 2));
        *cached = Some((SecretString::from(token.clone()), renew_at));
        Ok(token)
    }

    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}
