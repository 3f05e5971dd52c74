//! Token buckets per key (an operator token's family, a client's
//! network), bounded in keys: a client that makes up keys cannot grow the
//! server.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Keys with a bucket of their own at most. Past that, the keys whose
/// buckets are full again (the same as having none) are forgotten, at most
/// once every [`PRUNE_EVERY`]; meanwhile new keys share one bucket: a
/// client that makes up keys (an IPv6 host has addresses to spare) can
/// neither grow the server, nor have the keys already limited start over,
/// nor make each request look at every key.
const KEYS_KEPT: usize = 16_384;

/// How often a full limiter looks for keys to forget.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets by key.
#[derive(Debug)]
pub(crate) struct Limiter<K> {
    rate: Rate,
    buckets: Mutex<Buckets<K>>,
}

#[derive(Debug)]
struct Buckets<K> {
    by_key: HashMap<K, Bucket>,
    /// The bucket new keys share while `by_key` is full.
    shared: Bucket,
    /// When `by_key` was last looked at for keys to forget.
    pruned: Option<Instant>,
}

impl<K: Hash + Eq> Limiter<K> {
    pub(crate) fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(Buckets {
                by_key: HashMap::new(),
                shared: Bucket {
                    tokens: rate.burst,
                    at: Instant::now(),
                },
                pruned: None,
            }),
        }
    }

    /// Takes one from `key`'s bucket; `Err(seconds)` until one is back.
    pub(crate) fn take(&self, key: K) -> Result<(), u64> {
        if self.rate.is_unlimited() {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Buckets {
            by_key,
            shared,
            pruned,
        } = &mut *buckets;
        if by_key.len() >= KEYS_KEPT
            && !by_key.contains_key(&key)
            && pruned.is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY)
        {
            *pruned = Some(now);
            by_key.retain(|_, bucket| self.refill(*bucket, now).tokens < self.rate.burst);
        }
        let bucket = if by_key.len() < KEYS_KEPT || by_key.contains_key(&key) {
            by_key.entry(key).or_insert(Bucket {
                tokens: self.rate.burst,
                at: now,
            })
        } else {
            shared
        };
        *bucket = self.refill(*bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate.per_second;
            Err(wait.ceil() as u64)
        }
    }

    /// `bucket` as it is at `now`, refilled at the rate.
    fn refill(&self, bucket: Bucket, now: Instant) -> Bucket {
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate.per_second;
        Bucket {
            tokens: (bucket.tokens + refill).min(self.rate.burst),
            at: now,
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
    fn made_up_keys_neither_grow_the_limiter_nor_free_a_limited_key() {
        // Slow to refill: no bucket is full again while the test runs.
        let limiter = Limiter::new(Rate {
            per_second: 0.001,
            burst: 2.0,
        });
        // A key that used up its bucket.
        while limiter.take(u64::MAX).is_ok() {}
        // Many more keys than are kept, each drawing on its bucket.
        let refused = (0..(3 * KEYS_KEPT as u64))
            .filter(|key| limiter.take(*key).is_err())
            .count();
        let buckets = limiter.buckets.lock().unwrap();
        assert!(buckets.by_key.len() <= KEYS_KEPT);
        drop(buckets);
        // Past the kept ones, the made-up keys shared one bucket (its burst
        // of 2, then refused) …
        assert!(refused >= 2 * KEYS_KEPT - 2, "{refused}");
        // … and the limited key was not forgotten.
        assert!(limiter.take(u64::MAX).is_err());
    }

    #[test]
    fn a_key_whose_bucket_is_full_again_makes_room() {
        let limiter = Limiter::new(Rate {
            per_second: 1000.0,
            burst: 1.0,
        });
        for key in 0..KEYS_KEPT {
            limiter.take(key).unwrap();
        }
        // A millisecond later every bucket is full again: a new key gets
        // one of its own, and the others are forgotten.
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(limiter.take(KEYS_KEPT).is_ok());
        assert!(limiter.take(KEYS_KEPT + 1).is_ok(), "not the shared bucket");
        assert_eq!(limiter.buckets.lock().unwrap().by_key.len(), 2);
    }
}
