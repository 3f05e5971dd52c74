//! The extension registry: operation families added without changing the kernel.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::command::Timestamp;
use crate::error::KernelError;
use crate::id::EntityId;

/// A handler for one extension family's operations.
///
/// A handler decides; the kernel applies. [`OpcodeHandler::handle`] sees the
/// family's own key/value namespace read-only and returns the writes to make,
/// so a rejected operation changes nothing. A handler must be a pure function
/// of its inputs, like the kernel: no clock, no randomness, no I/O, otherwise
/// replaying the log stops reproducing the state.
///
/// # Examples
///
/// ```
/// use toka_kernel::{ExtensionCall, ExtensionEffects, KernelError, OpcodeHandler};
///
/// /// Counts calls per opcode.
/// struct Tally;
///
/// impl OpcodeHandler for Tally {
///     fn handle(&self, call: &ExtensionCall<'_>) -> Result<ExtensionEffects, KernelError> {
///         let key = call.opcode.to_be_bytes().to_vec();
///         let n = call.store.get(&key).map_or(0, |v| v[0]) + 1;
///         Ok(ExtensionEffects { writes: vec![(key, Some(vec![n]))], output: vec![n] })
///     }
/// }
/// ```
pub trait OpcodeHandler: Send + Sync {
    /// Decides the effects of one operation, or rejects it.
    ///
    /// # Errors
    ///
    /// Any [`KernelError`]; it is returned to the submitter unchanged and the
    /// state stays as it was.
    fn handle(&self, call: &ExtensionCall<'_>) -> Result<ExtensionEffects, KernelError>;
}

/// The input of an [`OpcodeHandler`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ExtensionCall<'a> {
    /// Who submitted the operation.
    pub origin: EntityId,
    /// The command's logical time.
    pub time: Timestamp,
    /// The family's opcode.
    pub opcode: u32,
    /// The operation's payload.
    pub payload: &'a [u8],
    /// The family's namespace in the world state.
    pub store: &'a BTreeMap<Vec<u8>, Vec<u8>>,
}

/// What an [`OpcodeHandler`] wants done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionEffects {
    /// Writes to the family's namespace: `Some(value)` puts, `None` deletes.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Bytes reported in the [`Event::ExtensionApplied`](crate::Event::ExtensionApplied) event.
    pub output: Vec<u8>,
}

/// The registered extension families, keyed by family name.
///
/// Cloning is cheap (handlers are shared). A kernel that replays a log needs
/// the same registry as the kernel that wrote it.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<String, Arc<dyn OpcodeHandler>>,
}

impl Registry {
    /// An empty registry: every extension operation is unsupported.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `family`, replacing any previous handler.
    pub fn register(&mut self, family: impl Into<String>, handler: impl OpcodeHandler + 'static) {
        self.handlers.insert(family.into(), Arc::new(handler));
    }

    /// The handler of `family`.
    ///
    /// # Errors
    ///
    /// [`KernelError::UnsupportedOperation`] when no handler is registered.
    pub fn get(&self, family: &str) -> Result<&dyn OpcodeHandler, KernelError> {
        self.handlers
            .get(family)
            .map(|h| h.as_ref())
            .ok_or_else(|| KernelError::UnsupportedOperation {
                family: family.to_owned(),
            })
    }

    /// The registered family names, in order.
    pub fn families(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}
