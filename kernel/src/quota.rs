//! Quota accounting: what each agent has spent, in integer arithmetic over
//! logical time.
//!
//! Each agent has an [`Account`]: a token bucket per rate of
//! [`Quotas`] and lifetime totals. An operation's cost is charged to its
//! origin and to every ancestor of it (at most [`Rules::max_depth`](crate::Rules::max_depth)
//! of them), so a tree can never spend more than its root may. Agents'
//! own operations are refused when any account on that chain cannot pay;
//! the records the host writes on an agent's behalf (task starts, outputs,
//! failures) are always accepted and may leave an account in debt, which
//! the refill pays back before the agent may spend again.
//!
//! Buckets count in thousandths of a unit, so refilling `per_second` over
//! `ms` milliseconds is exactly `per_second * ms` thousandths: no rounding
//! drifts, however often an agent asks.

use serde::{Deserialize, Serialize};

use crate::command::Timestamp;
use crate::rules::{Quota, Quotas, Rate};

/// One token bucket: how much is drawn now, as of a logical time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Thousandths of a unit drawn and not yet refilled (may pass the burst:
    /// debt from the host's own records).
    pub drawn: u64,
    /// The logical time (ms) `drawn` was last refilled to.
    pub at: u64,
}

impl Bucket {
    /// The bucket refilled at `rate` up to `now`.
    fn refilled(self, rate: Rate, now: u64) -> Bucket {
        if now <= self.at {
            return self;
        }
        let refill = u128::from(now - self.at) * u128::from(rate.per_second);
        let drawn = u128::from(self.drawn).saturating_sub(refill);
        Bucket {
            drawn: u64::try_from(drawn).unwrap_or(u64::MAX),
            at: now,
        }
    }

    /// Whether `cost` more fits under the burst.
    fn can_draw(self, rate: Rate, cost: u64) -> bool {
        u128::from(self.drawn) + u128::from(cost) * 1000 <= u128::from(rate.burst) * 1000
    }

    fn draw(&mut self, cost: u64) {
        self.drawn = self.drawn.saturating_add(cost.saturating_mul(1000));
    }

    /// Milliseconds of logical time after `now` until the bucket is back
    /// within `rate`'s burst (0: it is; `u64::MAX`: never, a rate that
    /// does not refill).
    fn debt_ms(self, rate: Rate, now: u64) -> u64 {
        if rate.is_unlimited() {
            return 0;
        }
        let drawn = u128::from(self.refilled(rate, now).drawn);
        let over = drawn.saturating_sub(u128::from(rate.burst) * 1000);
        match (over, rate.per_second) {
            (0, _) => 0,
            (_, 0) => u64::MAX,
            (over, per_second) => {
                u64::try_from(over.div_ceil(u128::from(per_second))).unwrap_or(u64::MAX)
            }
        }
    }
}

/// What one agent (with everything below it) has spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Log bytes, against [`Quotas::log_bytes`].
    pub log: Bucket,
    /// Operations, against [`Quotas::ops`].
    pub ops: Bucket,
    /// Tasks scheduled, against [`Quotas::tasks`].
    pub tasks: Bucket,
    /// Log bytes in all.
    pub log_bytes_total: u64,
    /// Tasks scheduled in all.
    pub tasks_total: u64,
}

/// What one command costs the accounts it is charged to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cost {
    /// Bytes of its log record.
    pub(crate) log_bytes: u64,
    /// 1 for an agent's own operation.
    pub(crate) ops: u64,
    /// 1 for a task an agent schedules.
    pub(crate) tasks: u64,
}

/// Why an account cannot pay: the quota, its value, and what the charge
/// would have made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shortfall {
    pub(crate) quota: Quota,
    pub(crate) limit: u64,
    pub(crate) wanted: u64,
}

impl Account {
    /// Milliseconds of logical time after `now` until the account's
    /// log-bytes debt (from the host's records on its behalf) is paid
    /// (0: none).
    pub(crate) fn log_debt_ms(&self, quotas: &Quotas, now: Timestamp) -> u64 {
        self.log.debt_ms(quotas.log_bytes, now.0)
    }

    /// This account after paying `cost` at `time` under `quotas`, or why it
    /// cannot (only when `strict`; otherwise it may end in debt).
    pub(crate) fn charged(
        &self,
        quotas: &Quotas,
        cost: Cost,
        time: Timestamp,
        strict: bool,
    ) -> Result<Account, Shortfall> {
        let now = time.0;
        let mut next = *self;
        let buckets = [
            (
                &mut next.log,
                quotas.log_bytes,
                cost.log_bytes,
                Quota::LogBytes,
            ),
            (&mut next.ops, quotas.ops, cost.ops, Quota::Ops),
            (&mut next.tasks, quotas.tasks, cost.tasks, Quota::Tasks),
        ];
        for (bucket, rate, amount, quota) in buckets {
            if amount == 0 || rate.is_unlimited() {
                continue;
            }
            *bucket = bucket.refilled(rate, now);
            if strict && !bucket.can_draw(rate, amount) {
                return Err(Shortfall {
                    quota,
                    limit: rate.burst,
                    wanted: bucket.drawn.div_ceil(1000).saturating_add(amount),
                });
            }
            bucket.draw(amount);
        }
        let totals = [
            (
                &mut next.log_bytes_total,
                quotas.log_bytes_total,
                cost.log_bytes,
                Quota::LogBytesTotal,
            ),
            (
                &mut next.tasks_total,
                quotas.tasks_total,
                cost.tasks,
                Quota::TasksTotal,
            ),
        ];
        for (total, limit, amount, quota) in totals {
            let wanted = total.saturating_add(amount);
            if let Some(limit) = limit
                && strict
                && amount > 0
                && wanted > limit
            {
                return Err(Shortfall {
                    quota,
                    limit,
                    wanted,
                });
            }
            *total = wanted;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> Quotas {
        Quotas {
            log_bytes: Rate::new(100, 1_000),
            ops: Rate::new(10, 20),
            tasks: Rate::new(1, 2),
            log_bytes_total: Some(5_000),
            tasks_total: None,
        }
    }

    fn cost(log_bytes: u64, ops: u64, tasks: u64) -> Cost {
        Cost {
            log_bytes,
            ops,
            tasks,
        }
    }

    #[test]
    fn a_burst_is_spent_then_refilled_over_logical_time() {
        let q = quotas();
        let mut account = Account::default();
        for _ in 0..20 {
            account = account
                .charged(&q, cost(10, 1, 0), Timestamp(0), true)
                .unwrap();
        }
        let short = account
            .charged(&q, cost(10, 1, 0), Timestamp(0), true)
            .unwrap_err();
        assert_eq!(short.quota, Quota::Ops);
        assert_eq!((short.limit, short.wanted), (20, 21));
        // 100 ms at 10/s refills exactly one operation.
        let account = account
            .charged(&q, cost(10, 1, 0), Timestamp(100), true)
            .unwrap();
        assert!(
            account
                .charged(&q, cost(10, 1, 0), Timestamp(100), true)
                .is_err()
        );
    }

    #[test]
    fn refills_do_not_drift_when_asked_often() {
        // 1 op/s asked every millisecond: a thousand asks refill one op.
        let q = Quotas {
            ops: Rate::new(1, 1),
            ..Quotas::UNLIMITED
        };
        let mut account = Account::default()
            .charged(&q, cost(0, 1, 0), Timestamp(0), true)
            .unwrap();
        for ms in 1..1000 {
            assert!(
                account
                    .charged(&q, cost(0, 1, 0), Timestamp(ms), true)
                    .is_err()
            );
            account = account
                .charged(&q, cost(0, 0, 0), Timestamp(ms), true)
                .unwrap();
        }
        assert!(
            account
                .charged(&q, cost(0, 1, 0), Timestamp(1000), true)
                .is_ok()
        );
    }

    #[test]
    fn host_records_may_leave_debt_and_totals_only_grow() {
        let q = quotas();
        let account = Account::default()
            .charged(&q, cost(3_000, 0, 0), Timestamp(0), false)
            .unwrap();
        assert_eq!(account.log_bytes_total, 3_000);
        let short = account
            .charged(&q, cost(1, 1, 0), Timestamp(0), true)
            .unwrap_err();
        assert_eq!(short.quota, Quota::LogBytes);
        // 2 000 bytes past the burst, at 100 a second: paid in 20 s.
        assert_eq!(account.log_debt_ms(&q, Timestamp(0)), 20_000);
        assert_eq!(account.log_debt_ms(&q, Timestamp(15_000)), 5_000);
        assert_eq!(account.log_debt_ms(&q, Timestamp(20_000)), 0);
        assert_eq!(Account::default().log_debt_ms(&q, Timestamp(0)), 0);
        let frozen = Quotas {
            log_bytes: Rate::new(0, 1_000),
            ..q
        };
        assert_eq!(account.log_debt_ms(&frozen, Timestamp(0)), u64::MAX);
        assert_eq!(account.log_debt_ms(&Quotas::UNLIMITED, Timestamp(0)), 0);
        // 30 s later the debt is paid, but the lifetime total still counts.
        let account = account
            .charged(&q, cost(1_000, 1, 0), Timestamp(30_000), true)
            .unwrap();
        let account = account
            .charged(&q, cost(1_000, 1, 0), Timestamp(60_000), true)
            .unwrap();
        let short = account
            .charged(&q, cost(1, 1, 0), Timestamp(90_000), true)
            .unwrap_err();
        assert_eq!((short.quota, short.wanted), (Quota::LogBytesTotal, 5_001));
    }

    #[test]
    fn unlimited_quotas_charge_nothing_but_totals() {
        let account = Account::default()
            .charged(&Quotas::UNLIMITED, cost(1 << 40, 1, 1), Timestamp(0), true)
            .unwrap();
        assert_eq!(account.log.drawn, 0);
        assert_eq!(account.tasks_total, 1);
    }
}
