//! Per-agent sandbox limits the host enforces (the kernel's own size and
//! count limits are in [`toka_kernel::Limits`]).

/// What one agent may consume, with documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLimits {
    /// Bytes of stdout captured per task; the rest is dropped. Default 64 KiB.
    pub stdout_bytes: usize,
    /// Bytes of stderr captured per task; the rest is dropped. Default 64 KiB.
    pub stderr_bytes: usize,
    /// `kernel.log` lines forwarded per task; the rest are dropped. Default 1000.
    pub log_lines_per_task: u32,
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self {
            stdout_bytes: 64 * 1024,
            stderr_bytes: 64 * 1024,
            log_lines_per_task: 1000,
        }
    }
}
