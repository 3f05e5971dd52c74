//! Denial records, rate-limited per agent so a hostile agent cannot flood
//! the log with them: the agent always gets its refusal, the log gets the
//! first few per minute of logical time.

use std::collections::HashMap;

use toka_kernel::{AgentId, Command, Denial, Operation, Timestamp};

use super::core::{Attachments, Core, Denials};
use crate::capability::policy::Check;

/// Denials recorded per agent per minute of logical time.
const DENIALS_PER_MINUTE: u32 = 20;

impl Denials {
    /// Counts a denial of `agent` at `time`; whether to record it.
    fn admit(&mut self, agent: AgentId, time: Timestamp) -> bool {
        let minute = time.0 / 60_000;
        if minute > self.minute {
            // The last minute's counts are done with (an agent denied once
            // is not held for ever), and so is the room a burst took.
            self.minute = minute;
            self.counts = HashMap::default();
        }
        let count = self.counts.entry(agent).or_insert(0);
        *count += 1;
        if *count == DENIALS_PER_MINUTE + 1 {
            tracing::warn!(agent = %agent.short(), "more denials this minute; they are not recorded");
        }
        *count <= DENIALS_PER_MINUTE
    }
}

impl Core {
    /// Records that the gate denied `check` to `agent` (rate-limited).
    pub(super) fn record_denial(
        &mut self,
        agent: AgentId,
        check: &Check,
        delegation: bool,
        reason: &str,
        time: Timestamp,
    ) {
        if !self.denials.admit(agent, time) {
            return;
        }
        let limits = self.kernel.limits();
        let (max_reason, max_name) = (limits.max_reason as usize, limits.max_name as usize);
        let denial = Denial {
            operation: check.operation.to_owned(),
            targets: check
                .targets
                .iter()
                .map(|t| crate::text::clip(t, max_name))
                .collect(),
            delegation,
            reason: crate::text::clip(reason, max_reason),
        };
        let command = Command::system(
            agent,
            time,
            Operation::RecordDenial {
                denial: Box::new(denial),
            },
        );
        if let Err(e) = self.apply(command, Attachments::default()) {
            tracing::warn!(agent = %agent.short(), error = %e, "could not record a denial");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_minute_and_holds_only_the_current_one() {
        let mut denials = Denials::default();
        let agent = |n: u128| AgentId::from_u128(n + 1);
        let recorded = (0..DENIALS_PER_MINUTE + 5)
            .filter(|_| denials.admit(agent(0), Timestamp(1_000)))
            .count();
        assert_eq!(recorded, DENIALS_PER_MINUTE as usize);
        // Many agents denied once each in one minute...
        for n in 1..=1000 {
            assert!(denials.admit(agent(n), Timestamp(61_000)));
        }
        assert_eq!(denials.counts.len(), 1000);
        // ...are let go when the next minute's first denial comes, and
        // the flooding agent gets its quota back.
        assert!(denials.admit(agent(0), Timestamp(121_000)));
        assert_eq!(denials.counts.len(), 1);
    }
}
