//! Token buckets per key (an operator token, a client address), bounded in
//! keys: a client that makes up keys cannot grow the server.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// A rate: `per_second` on average, up to `burst` at once. Zero per second:
/// unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests per second, on average.
    pub per_second: f64,
    /// Requests at once after a quiet spell.
    pub burst: f64,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate {
        per_second: 0.0,
        burst: 0.0,
    };

    /// `per_second` with a burst of twice that (at least 1).
    #[must_use]
    pub fn per_second(per_second: f64) -> Rate {
        Rate {
            per_second,
            burst: (2.0 * per_second).max(1.0),
        }
    }

    fn is_unlimited(self) -> bool {
        self.per_second <= 0.0
    }
}

/// Keys kept before the limiter starts over (every key gets a full
/// bucket again: generous, never unbounded).
const KEYS_KEPT: usize = 16_384;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets by key.
#[derive(Debug)]
pub(crate) struct Limiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq> Limiter<K> {
    pub(crate) fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one from `key`'s bucket; `Err(seconds)` until one is back.
    pub(crate) fn take(&self, key: K) -> Result<(), u64> {
        if self.rate.is_unlimited() {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= KEYS_KEPT && !buckets.contains_key(&key) {
            buckets.clear();
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.rate.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate.per_second;
            Err(wait.ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusals_naming_the_wait() {
        let limiter = Limiter::new(Rate {
            per_second: 1.0,
            burst: 3.0,
        });
        for _ in 0..3 {
            assert!(limiter.take("a").is_ok());
        }
        assert_eq!(limiter.take("a"), Err(1));
        assert!(limiter.take("b").is_ok(), "keys have their own buckets");
        assert!(Limiter::new(Rate::UNLIMITED).take("a").is_ok());
    }

    #[test]
    fn made_up_keys_do_not_grow_the_limiter() {
        let limiter = Limiter::new(Rate::per_second(1.0));
        for key in 0..(3 * KEYS_KEPT) {
            let _ = limiter.take(key);
        }
        assert!(limiter.buckets.lock().unwrap().len() <= KEYS_KEPT);
    }
}
