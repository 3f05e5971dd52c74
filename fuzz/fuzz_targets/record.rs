//! Log records from bytes: decoding, verified replay and the start-up
//! restore path must return an error for anything that is not a sealed
//! record, and never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use toka_kernel::{Kernel, Limits, Record};

fuzz_target!(|bytes: &[u8]| {
    let _ = Record::decode(bytes);
    let _ = Record::decode_unchecked(bytes);
    let mut kernel = Kernel::new(Limits::default());
    if kernel.replay(bytes).is_ok() {
        assert_eq!(kernel.head().seq, 1, "a fresh kernel takes only record 1");
    }
    let _ = Kernel::new(Limits::default()).restore(bytes);
});
