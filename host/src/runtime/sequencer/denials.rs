//! Denial records, rate-limited per agent so a hostile agent cannot flood
//! the log with them: the agent always gets its refusal, the log gets the
//! first few per minute of logical time.

use toka_kernel::{AgentId, Command, Denial, Operation, Timestamp};

use super::core::{Attachments, Core, Denials};
use crate::capability::policy::Check;

/// Denials recorded per agent per minute of logical time.
const DENIALS_PER_MINUTE: u32 = 20;

impl Denials {
    /// Counts a denial of `agent` at `time`; whether to record it.
    fn admit(&mut self, agent: AgentId, time: Timestamp) -> bool {
        let minute = time.0 / 60_000;
        let count = self.0.entry(agent).or_insert((minute, 0));
        if count.0 != minute {
            *count = (minute, 0);
        }
        count.1 += 1;
        if count.1 == DENIALS_PER_MINUTE + 1 {
            tracing::warn!(agent = %agent.short(), "more denials this minute; they are not recorded");
        }
        count.1 <= DENIALS_PER_MINUTE
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
