//! Capability tokens from bytes. The first byte picks the attack:
//! even — the rest are token bytes (base64 or raw), which must be refused
//! (they are not signed by this root) without a panic; odd — the rest is
//! Datalog the holder of a real token appends as a block, which must never
//! make the token grant a right its root block did not, or raise a budget.

#![no_main]

use std::sync::OnceLock;

use biscuit_auth::builder::BlockBuilder;
use libfuzzer_sys::fuzz_target;
use toka_host::{Budget, Right, RootKey, Token};
use toka_kernel::Timestamp;

const ASKED: &[&str] = &[
    "observe",
    "state",
    "spawn worker",
    "spawn *",
    "schedule *",
    "schedule children",
    "terminate *",
    "http evil.example",
    "fs.write /",
    "fs.read /srv",
    "extension agent",
];

fn root() -> &'static (RootKey, Token) {
    static ROOT: OnceLock<(RootKey, Token)> = OnceLock::new();
    ROOT.get_or_init(|| {
        let key = RootKey::generate();
        let rights: Vec<Right> = [
            "observe",
            "spawn worker",
            "schedule children",
            "fs.read /srv",
        ]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
        let budgets = [Budget::Memory(32 << 20), Budget::DeadlineMs(5_000)];
        let token = Token::issue(&key, &rights, &budgets, None).unwrap();
        (key, token)
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    let (key, token) = root();
    if mode % 2 == 0 {
        assert!(Token::parse(rest, key.public(), 8192).is_err());
        let _ = Token::inspect_unverified(rest);
        return;
    }
    let Ok(code) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(block) = BlockBuilder::new().code(code) else {
        return;
    };
    let Ok(biscuit) =
        biscuit_auth::Biscuit::from(token.bytes(), key.public()).and_then(|b| b.append(block))
    else {
        return;
    };
    let Ok(attacker) = Token::parse(&biscuit.to_vec().unwrap(), key.public(), 1 << 20) else {
        return;
    };
    let at = Timestamp(1_000);
    for asked in ASKED {
        let right: Right = asked.parse().unwrap();
        if attacker.grants(&right, at).is_ok() {
            assert!(
                token.grants(&right, at).is_ok(),
                "{code:?} widened the token to `{asked}`"
            );
        }
    }
    if let Ok(budgets) = attacker.budgets() {
        for held in token.budgets().unwrap() {
            let after = budgets.iter().find(|b| b.fact_name() == held.fact_name());
            assert!(
                after.is_some_and(|b| b.value() <= held.value()),
                "{code:?} raised {held:?}"
            );
        }
    }
});
