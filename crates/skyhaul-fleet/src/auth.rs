//! The bearer token that every request to a coordinator or a worker's metrics must carry.
//!
//! The token is a secret: it is compared in constant time, never echoed in an answer, and
//! its `Debug`/`Display` forms are redacted so that no log line or error can carry it.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Environment variable a token is read from (safer than `--token`, which `ps` shows).
pub const TOKEN_ENV: &str = "SKYHAUL_FLEET_TOKEN";

/// The shortest token accepted: a guessable token is no authentication.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// A token as given by the user; refused (with a message that does not repeat it) when
    /// too short or not printable ASCII (it goes into an HTTP header).
    pub fn new(text: &str) -> Result<Token, String> {
        let text = text.trim();
        if text.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the fleet token must be at least {MIN_TOKEN_LEN} characters"
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the fleet token must be printable ASCII without spaces".to_string());
        }
        Ok(Token(text.into()))
    }

    /// A fresh random token (256 bits, hex): what a local fleet uses.
    pub fn generate() -> Token {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Token(hex.into())
    }

    /// The secret itself: only for the `Authorization` header and a child's environment.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `header` is `Bearer <this token>`, in time independent of the contents.
    pub fn admits(&self, header: Option<&str>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        given.as_bytes().ct_eq(self.0.as_bytes()).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Middleware: 401 for a request without the right bearer token.
pub async fn require(State(token): State<Token>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if token.admits(given) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong bearer token\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_only_the_exact_token() {
        let t = Token::new("0123456789abcdef-secret").unwrap();
        assert!(t.admits(Some("Bearer 0123456789abcdef-secret")));
        assert!(!t.admits(Some("Bearer 0123456789abcdef-secreT")));
        assert!(!t.admits(Some("Bearer 0123456789abcdef-secret2")));
        assert!(!t.admits(Some("0123456789abcdef-secret")));
        assert!(!t.admits(Some("Basic 0123456789abcdef-secret")));
        assert!(!t.admits(None));
    }

    #[test]
    fn never_shows_the_secret() {
        let t = Token::new("0123456789abcdef-secret").unwrap();
        assert!(!format!("{t:?}").contains("secret"));
        let short = Token::new("short-secret").unwrap_err();
        assert!(!short.contains("short-secret"), "{short}");
        assert!(Token::new("has a space in it, long enough").is_err());
        assert_eq!(Token::generate().expose().len(), 64);
        assert_ne!(Token::generate().expose(), Token::generate().expose());
    }
}
