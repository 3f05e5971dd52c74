//! The kernel: the world state, its limits and extensions, and the chain head.

use crate::apply::Env;
use crate::command::Command;
use crate::error::KernelError;
use crate::event::Event;
use crate::extension::Registry;
use crate::id::{AgentId, Digest};
use crate::limits::Limits;
use crate::mail::Cell;
use crate::record::{ChainHead, Parts, Record, RecordError};
use crate::state::WorldState;

/// The pure, deterministic state machine every effect passes through.
///
/// [`Kernel::apply`] validates a command against the state, mutates it, and
/// seals the command into the next hash-chained log record. There is no I/O,
/// clock or randomness inside: the same commands in the same order give the
/// same records, events and state on every machine.
///
/// # Examples
///
/// ```
/// use toka_kernel::{Command, ComponentSpec, Digest, EntityId, Event, Kernel, Limits, Operation, Timestamp};
///
/// let mut kernel = Kernel::new(Limits::default());
/// let component = ComponentSpec { digest: Digest::of(b"wasm"), name: "hello".into(), size: 4 };
/// let install = Operation::InstallComponent { component: Box::new(component.clone()) };
/// let applied = kernel.apply(Command::system(EntityId::SYSTEM, Timestamp(1), install)).unwrap();
/// assert_eq!(applied.seq, 1);
/// assert_eq!(applied.events, vec![Event::ComponentInstalled { component }]);
/// assert_eq!(kernel.head().hash, applied.hash);
/// ```
#[derive(Debug, Clone)]
pub struct Kernel {
    state: WorldState,
    head: ChainHead,
    limits: Limits,
    registry: Registry,
    /// The cluster cell the log belongs to, if it does.
    cell: Option<Cell>,
    /// Reused buffer for encoding records.
    scratch: Vec<u8>,
    /// The canonical encoding of the operation the last rejected command
    /// carried (see [`Kernel::rejected_operation`]).
    rejected: Vec<u8>,
    /// [`WorldState::forgettable`] at the head it was found at (see
    /// [`Kernel::forgettable`]).
    forgettable: Option<(ChainHead, Vec<AgentId>)>,
}

/// The result of applying one command: its record's position, hash and
/// bytes, and the events (which took the command's payloads; decode `bytes`
/// with [`Record::decode`] for the command itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's hash, the new chain head.
    pub hash: crate::Digest,
    /// The command's origin.
    pub origin: crate::EntityId,
    /// The command's logical time.
    pub time: crate::Timestamp,
    /// The task position of the command, if an agent submitted it in a task.
    pub cause: Option<crate::OpKey>,
    /// The record's encoding, ready to be stored.
    pub bytes: Vec<u8>,
    /// What the command did.
    pub events: Vec<Event>,
}

/// Why a log does not replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {seq}: {kind}")]
pub struct ReplayError {
    /// The first bad record's position (the one expected at this point).
    pub seq: u64,
    /// What is wrong with it.
    pub kind: ReplayErrorKind,
}

/// What is wrong with a record that does not replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayErrorKind {
    /// The bytes are not a valid record.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The record carries another sequence number than its position.
    #[error("sequence number is {found}, expected {expected}")]
    Seq {
        /// The position.
        expected: u64,
        /// What the record says.
        found: u64,
    },
    /// The record's `prev_hash` is not the previous record's hash.
    #[error("prev_hash {found} does not match the previous record's hash {expected}")]
    BrokenChain {
        /// The previous record's hash.
        expected: crate::Digest,
        /// What the record says.
        found: crate::Digest,
    },
    /// The kernel rejects the record's command: the log is not one this
    /// kernel (with these limits and extensions) wrote.
    #[error("the kernel rejects its command: {0}")]
    Rejected(KernelError),
    /// The command does not re-encode to the stored bytes.
    #[error("the stored bytes are not the canonical encoding of the command")]
    NonCanonical,
}

impl Kernel {
    /// A kernel with an empty world and no extension families.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self::with_registry(limits, Registry::new())
    }

    /// A kernel with an empty world and the given extension families.
    #[must_use]
    pub fn with_registry(limits: Limits, registry: Registry) -> Self {
        Self::from_snapshot(
            WorldState::default(),
            ChainHead::default(),
            limits,
            registry,
        )
    }

    /// A kernel that continues from a snapshot: the state after the record at
    /// `head`.
    #[must_use]
    pub fn from_snapshot(
        state: WorldState,
        head: ChainHead,
        limits: Limits,
        registry: Registry,
    ) -> Self {
        Self {
            state,
            head,
            limits,
            registry,
            cell: None,
            scratch: Vec::new(),
            rejected: Vec::new(),
            forgettable: None,
        }
    }

    /// The same kernel for the log of cluster cell `cell`: every id it mints
    /// carries the cell's index ([`EntityId::cell`](crate::EntityId::cell)), and a task for an
    /// agent of another cell is sent (see [`Outgoing`](crate::Outgoing)).
    /// Where the log lives decides it, like its limits: a replay of the log
    /// must be given the same.
    #[must_use]
    pub fn in_cell(mut self, cell: Option<Cell>) -> Self {
        self.cell = cell;
        self
    }

    /// The cluster cell the kernel's log belongs to, if any.
    #[must_use]
    pub fn cell(&self) -> Option<Cell> {
        self.cell
    }

    /// The world state.
    #[must_use]
    pub fn state(&self) -> &WorldState {
        &self.state
    }

    /// The tip of the log: the last record's sequence number and hash.
    #[must_use]
    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// The limits the kernel enforces.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The extension families.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// [`WorldState::forgettable`] of the state now, kept until the next
    /// command applies: an [`Operation::ForgetTerminated`](crate::Operation::ForgetTerminated)
    /// applied next forgets these without looking for them again (a pass
    /// over every agent). For a caller that asks before it applies one.
    pub fn forgettable(&mut self) -> &[AgentId] {
        let head = self.head;
        let fresh = matches!(&self.forgettable, Some((at, _)) if *at == head);
        if !fresh {
            self.forgettable = Some((head, self.state.forgettable()));
        }
        self.forgettable.as_ref().map_or(&[], |(_, found)| found)
    }

    /// Applies `command`: validates it, mutates the state, and seals it into
    /// the next log record.
    ///
    /// # Errors
    ///
    /// A [`KernelError`] when the command is not valid in the current state;
    /// the state and the chain head are then exactly as before.
    pub fn apply(&mut self, command: Command) -> Result<Applied, KernelError> {
        self.apply_as(command, false)
    }

    /// [`Kernel::apply`]; `recorded` when `command` is a stored record's.
    fn apply_as(&mut self, command: Command, recorded: bool) -> Result<Applied, KernelError> {
        let seq = self.head.seq + 1;
        // Sealing is pure, so it goes first: then the state can take the
        // command's payloads into the events instead of copying them. A
        // rejected command only wastes the encoding.
        let (hash, bytes) = Record::seal(seq, &self.head.hash, &command, &mut self.scratch);
        let (origin, time, auth, cause) =
            (command.origin, command.time, command.auth, command.cause);
        let env = Env {
            limits: &self.limits,
            registry: &self.registry,
            seq,
            record_len: bytes.len() as u64,
            cell: self.cell,
            recorded,
            forgettable: match &self.forgettable {
                Some((at, found)) if *at == self.head => Some(found),
                _ => None,
            },
        };
        self.rejected.clear();
        let events = match self.state.apply(command, &env) {
            Ok(events) => events,
            Err(e) => {
                // The operation's encoding ends the record's body: keep it
                // for a caller that records what was refused.
                let offset =
                    Record::operation_offset(seq, &self.head.hash, origin, time, auth, cause);
                let body = &bytes[..bytes.len() - crate::record::HASH_LEN];
                self.rejected
                    .extend_from_slice(&body[offset.min(body.len())..]);
                return Err(e);
            }
        };
        self.head = ChainHead { seq, hash };
        // Found for the state before: no use now.
        self.forgettable = None;
        Ok(Applied {
            seq,
            hash,
            origin,
            time,
            cause,
            bytes,
            events,
        })
    }

    /// The canonical (postcard) encoding of the operation of the command
    /// the last [`Kernel::apply`] rejected; empty after one that applied.
    /// A host that records what it refused identifies the request by it
    /// without encoding every operation it applies.
    #[must_use]
    pub fn rejected_operation(&self) -> &[u8] {
        &self.rejected
    }

    /// Verifies one stored record against the chain and applies its command.
    ///
    /// Checks, in order: the record decodes and its hash matches its body; its
    /// sequence number is the next one; its `prev_hash` is the current head;
    /// the kernel accepts its command; the command re-encodes to exactly the
    /// stored bytes.
    ///
    /// # Errors
    ///
    /// A [`ReplayError`] naming the expected sequence number. After an error
    /// the kernel may hold a partly replayed state: discard it.
    pub fn replay(&mut self, bytes: &[u8]) -> Result<Applied, ReplayError> {
        let record = Record::decode(bytes).map_err(|e| self.fail(e.into()))?;
        self.check_place(record.seq, record.prev_hash)?;
        let applied = self
            .apply_as(record.command, true)
            .map_err(|e| self.fail(ReplayErrorKind::Rejected(e)))?;
        if applied.bytes != bytes {
            return Err(self.fail(ReplayErrorKind::NonCanonical));
        }
        Ok(applied)
    }

    /// A replay error at the record expected next.
    fn fail(&self, kind: ReplayErrorKind) -> ReplayError {
        ReplayError {
            seq: self.head.seq + 1,
            kind,
        }
    }

    /// Checks that the record at `seq` after `prev_hash` is the next one:
    /// its sequence number follows the head, and its `prev_hash` is the
    /// head's hash.
    fn check_place(&self, seq: u64, prev_hash: Digest) -> Result<(), ReplayError> {
        let expected = self.head.seq + 1;
        if seq != expected {
            return Err(self.fail(ReplayErrorKind::Seq {
                expected,
                found: seq,
            }));
        }
        if prev_hash != self.head.hash {
            return Err(self.fail(ReplayErrorKind::BrokenChain {
                expected: self.head.hash,
                found: prev_hash,
            }));
        }
        Ok(())
    }
}

impl Kernel {
    /// Applies a stored record the store vouches for, checking the chain's
    /// structure (its sequence number, and that its `prev_hash` is the
    /// current head) but not recomputing its hash or re-encoding it: the
    /// fast path a host takes to rebuild its state at start-up. Use
    /// [`Kernel::replay`] to verify a record.
    ///
    /// # Errors
    ///
    /// A [`ReplayError`] when the record does not decode, is out of place,
    /// or the kernel rejects its command. The kernel is then to be discarded.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), ReplayError> {
        let parts = Parts::split(bytes, false).map_err(|e| self.fail(e.into()))?;
        self.check_place(parts.seq, parts.prev_hash)?;
        // Matched, not mapped: `map_err` moved the command once more.
        let command = match parts.command() {
            Ok(command) => command,
            Err(e) => return Err(self.fail(e.into())),
        };
        let env = Env {
            limits: &self.limits,
            registry: &self.registry,
            seq: parts.seq,
            record_len: bytes.len() as u64,
            cell: self.cell,
            recorded: true,
            forgettable: None,
        };
        if let Err(e) = self.state.apply(command, &env) {
            return Err(self.fail(ReplayErrorKind::Rejected(e)));
        }
        self.head = ChainHead {
            seq: parts.seq,
            hash: parts.hash,
        };
        Ok(())
    }
}

/// Replays a whole log into a fresh kernel, checking every record.
///
/// The caller compares the result's [`Kernel::head`] and state digest with
/// what it expects (the live kernel's, or the head stored with the log).
///
/// # Errors
///
/// The first record that does not verify, as a [`ReplayError`].
///
/// # Examples
///
/// ```
/// use toka_kernel::{replay_log, Command, ComponentSpec, Digest, EntityId, Kernel, Limits, Operation, Registry, Timestamp};
///
/// let mut live = Kernel::new(Limits::default());
/// let spec = ComponentSpec { digest: Digest::of(b"w"), name: "w".into(), size: 1 };
/// let op = Operation::InstallComponent { component: Box::new(spec) };
/// let record = live.apply(Command::system(EntityId::SYSTEM, Timestamp(0), op)).unwrap().bytes;
///
/// let replayed = replay_log([record], Limits::default(), Registry::new()).unwrap();
/// assert_eq!(replayed.head(), live.head());
/// assert_eq!(replayed.state().digest(), live.state().digest());
/// ```
pub fn replay_log<I>(records: I, limits: Limits, registry: Registry) -> Result<Kernel, ReplayError>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let mut kernel = Kernel::with_registry(limits, registry);
    for bytes in records {
        kernel.replay(bytes.as_ref())?;
    }
    Ok(kernel)
}
