//! Tokens presented from outside (API clients' operator tokens), verified
//! once and kept, bounded.

use toka_kernel::Digest;

use crate::capability::token::{Token, TokenError};

/// Verified operator tokens by the digest of the text presented, so a
/// client's token is verified (two signatures, ~150 µs) once, not per
/// request. Bounded: past [`OPERATOR_TOKENS_KEPT`] it starts over.
#[derive(Debug, Default)]
pub(crate) struct PresentedTokens(std::sync::Mutex<std::collections::HashMap<Digest, Token>>);

/// Presented operator tokens kept verified.
const OPERATOR_TOKENS_KEPT: usize = 1024;

impl PresentedTokens {
    /// The token `presented` is, verified with `verify` the first time.
    pub(crate) fn get_or_verify(
        &self,
        presented: &[u8],
        verify: impl FnOnce() -> Result<Token, TokenError>,
    ) -> Result<Token, TokenError> {
        let key = Digest::of(presented);
        if let Some(token) = self.lock().get(&key) {
            return Ok(token.clone());
        }
        let token = verify()?;
        let mut tokens = self.lock();
        if tokens.len() >= OPERATOR_TOKENS_KEPT {
            tokens.clear();
        }
        tokens.insert(key, token.clone());
        Ok(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Digest, Token>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
