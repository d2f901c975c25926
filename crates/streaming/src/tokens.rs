//! One-shot tokens: what the Exec/Attach/PortForward RPCs hand out and the streaming URL carries.
//! A token is 32 bytes from the OS's CSPRNG (URL-safe base64), can be used once, and expires unused after
//! the configured time (kubelet's: 1 minute).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::backend::Request;

pub struct TokenStore {
    ttl: Duration,
    tokens: Mutex<HashMap<String, (Request, Instant)>>,
}

impl TokenStore {
    pub fn new(ttl: Duration) -> TokenStore {
        TokenStore { ttl, tokens: Mutex::new(HashMap::new()) }
    }

    /// A fresh token for `request`.
    pub fn issue(&self, request: Request) -> String {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS random number generator works");
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap();
        // Expired tokens are dropped here, so the map holds at most a minute's worth.
        tokens.retain(|_, (_, issued)| now.duration_since(*issued) < self.ttl);
        tokens.insert(token.clone(), (request, now));
        token
    }

    /// The request of a valid token, which is used up by this call; `None` if unknown, used or expired.
    pub fn take(&self, token: &str) -> Option<Request> {
        let (request, issued) = self.tokens.lock().unwrap().remove(token)?;
        (issued.elapsed() < self.ttl).then_some(request)
    }

    /// Tokens issued and not yet used or swept.
    pub fn len(&self) -> usize {
        self.tokens.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PortForwardRequest;

    fn request() -> Request {
        Request::PortForward(PortForwardRequest { pod_sandbox_id: "p".into() })
    }

    #[test]
    fn a_token_works_once() {
        let store = TokenStore::new(Duration::from_secs(60));
        let token = store.issue(request());
        assert_eq!(token.len(), 43, "32 bytes in unpadded base64");
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(store.take(&token), Some(request()));
        assert_eq!(store.take(&token), None);
    }

    #[test]
    fn tokens_differ_and_expire() {
        let store = TokenStore::new(Duration::from_millis(20));
        let a = store.issue(request());
        let b = store.issue(request());
        assert_ne!(a, b);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(store.take(&a), None);
        // Issuing sweeps what expired.
        store.issue(request());
        assert_eq!(store.len(), 1);
        assert_eq!(store.take(&b), None);
    }
}
