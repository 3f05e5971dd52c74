//! What an install grants: the rights a package requests, met with the
//! rights the operator approves.
//!
//! One right *covers* another when everything the narrower one lets its
//! holder do, the wider one lets it do too:
//!
//! - the same class without a target (`observe`, `state`): equal;
//! - `schedule`, `terminate`, `spawn`, `extension`: `*` covers every
//!   target; otherwise only the same target (`self`, `children` and an
//!   agent id are different targets: none covers another);
//! - `fs.read` / `fs.write`: a directory covers itself and what is below
//!   it (`/data` covers `/data/in`, not `/database`); `fs.write` covers
//!   `fs.read` of the same paths;
//! - `http`: `*` covers every host; a host without a port covers it with
//!   any port (`example.com` covers `example.com:8080`).
//!
//! The install token grants the *meet* of each requested and each approved
//! right (the widest right both cover, when there is one), so it never
//! grants what the package did not ask for or the operator did not
//! approve.

use crate::capability::rights::{Right, RightOp};

/// Whether `wide` grants everything `narrow` grants.
#[must_use]
pub fn covers(wide: &Right, narrow: &Right) -> bool {
    use RightOp::{Extension, FsRead, FsWrite, Http, Schedule, Spawn, Terminate};
    let (w, n) = (wide.target(), narrow.target());
    match (wide.op(), narrow.op()) {
        (FsWrite, FsRead | FsWrite) | (FsRead, FsRead) => {
            path_covers(w.unwrap_or("/"), n.unwrap_or("/"))
        }
        (a, b) if a != b => false,
        (Schedule | Terminate | Spawn | Extension, _) => w == Some("*") || w == n,
        (Http, _) => {
            w == Some("*")
                || w == n
                || matches!((w, n), (Some(host), Some(n))
                    if !host.contains(':') && n.split_once(':').is_some_and(|(h, _)| h == host))
        }
        _ => w == n,
    }
}

/// The widest right both `a` and `b` cover, if there is one.
#[must_use]
pub fn meet(a: &Right, b: &Right) -> Option<Right> {
    if covers(a, b) {
        return Some(b.clone());
    }
    if covers(b, a) {
        return Some(a.clone());
    }
    // `fs.write /data` and `fs.read /data/in`-like pairs are caught above;
    // left is `fs.read` of a directory with `fs.write` below it.
    let fs = [RightOp::FsRead, RightOp::FsWrite];
    if fs.contains(&a.op()) && fs.contains(&b.op()) {
        let (pa, pb) = (a.target()?, b.target()?);
        let deeper = if path_covers(pa, pb) {
            pb
        } else if path_covers(pb, pa) {
            pa
        } else {
            return None;
        };
        return format!("fs.read {deeper}").parse().ok();
    }
    None
}

/// What an install token grants: the meets of every requested and every
/// approved right, without the ones another of them covers, sorted.
#[must_use]
pub fn intersect(requested: &[Right], approved: &[Right]) -> Vec<Right> {
    let mut meets: Vec<Right> = requested
        .iter()
        .flat_map(|r| approved.iter().filter_map(move |a| meet(r, a)))
        .collect();
    meets.sort();
    meets.dedup();
    let minimal: Vec<Right> = meets
        .iter()
        .filter(|r| !meets.iter().any(|o| o != *r && covers(o, r)))
        .cloned()
        .collect();
    minimal
}

/// The first of `approved` that no requested right covers: an approval
/// that would widen the request.
#[must_use]
pub(crate) fn wider_than_requested<'a>(
    requested: &[Right],
    approved: &'a [Right],
) -> Option<&'a Right> {
    approved
        .iter()
        .find(|a| !requested.iter().any(|r| covers(r, a)))
}

/// The requested rights that none of `held` covers: what an upgrade asks
/// for anew.
#[must_use]
pub(crate) fn not_held(requested: &[Right], held: &[Right]) -> Vec<Right> {
    requested
        .iter()
        .filter(|r| !held.iter().any(|h| covers(h, r)))
        .cloned()
        .collect()
}

/// Whether directory `wide` is `narrow` or above it, by whole path
/// components (`/data` covers `/data/in`, not `/database`).
fn path_covers(wide: &str, narrow: &str) -> bool {
    let wide = wide.trim_end_matches('/');
    let narrow = narrow.trim_end_matches('/');
    wide.is_empty()
        || narrow == wide
        || narrow
            .strip_prefix(wide)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::policy::{Check, decide};
    use crate::capability::root_key::RootKey;
    use crate::capability::token::Token;
    use proptest::prelude::*;
    use toka_kernel::{EntityId, Timestamp};

    fn r(text: &str) -> Right {
        text.parse().unwrap()
    }

    fn rs(texts: &[&str]) -> Vec<Right> {
        texts.iter().map(|t| r(t)).collect()
    }

    #[test]
    fn approval_narrows_but_never_widens() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "fs.read /data",
                "fs.read /data/in",
                Some("fs.read /data/in"),
            ),
            ("fs.read /data", "fs.read /database", None),
            (
                "fs.read /data/in",
                "fs.read /data",
                Some("fs.read /data/in"),
            ),
            (
                "fs.write /data",
                "fs.read /data/in",
                Some("fs.read /data/in"),
            ),
            (
                "fs.read /data",
                "fs.write /data/in",
                Some("fs.read /data/in"),
            ),
            ("schedule *", "schedule children", Some("schedule children")),
            ("schedule children", "schedule *", Some("schedule children")),
            ("schedule self", "schedule children", None),
            ("spawn *", "spawn worker", Some("spawn worker")),
            ("spawn worker", "spawn helper", None),
            (
                "http example.com",
                "http example.com:8080",
                Some("http example.com:8080"),
            ),
            ("http example.com:8080", "http example.com:9090", None),
            (
                "http *",
                "http api.example.com",
                Some("http api.example.com"),
            ),
            ("observe", "observe", Some("observe")),
            ("observe", "state", None),
        ];
        for (requested, approved, expected) in cases {
            let got = meet(&r(requested), &r(approved)).map(|m| m.to_string());
            assert_eq!(got.as_deref(), *expected, "{requested} ∩ {approved}");
        }
        let requested = rs(&["fs.read /data", "schedule *", "observe"]);
        assert_eq!(
            wider_than_requested(&requested, &rs(&["fs.read /"])).map(ToString::to_string),
            Some("fs.read /".to_owned())
        );
        assert_eq!(
            wider_than_requested(&requested, &rs(&["fs.read /data/in", "schedule self"])),
            None
        );
        let mut expected = rs(&["fs.read /data/in", "schedule children"]);
        expected.sort();
        assert_eq!(
            intersect(&requested, &rs(&["fs.read /data/in", "schedule children"])),
            expected
        );
        assert_eq!(
            not_held(
                &rs(&["observe", "http a.com:1", "state"]),
                &rs(&["observe", "http a.com"])
            ),
            rs(&["state"])
        );
    }

    /// Rights over a small universe, so random sets overlap often.
    fn right() -> impl Strategy<Value = Right> {
        let targets = ["self", "children", "*", "0123456789abcdef0123456789abcdef"];
        prop_oneof![
            Just(r("observe")),
            Just(r("state")),
            (
                prop_oneof![Just("schedule"), Just("terminate")],
                0..targets.len()
            )
                .prop_map(move |(op, t)| r(&format!("{op} {}", targets[t]))),
            prop_oneof![Just("worker"), Just("helper"), Just("*")]
                .prop_map(|c| r(&format!("spawn {c}"))),
            prop_oneof![Just("a.com"), Just("a.com:80"), Just("b.com"), Just("*")]
                .prop_map(|h| r(&format!("http {h}"))),
            (
                prop_oneof![Just("fs.read"), Just("fs.write")],
                prop_oneof![
                    Just("/"),
                    Just("/data"),
                    Just("/data/in"),
                    Just("/database")
                ]
            )
                .prop_map(|(op, p)| r(&format!("{op} {p}"))),
        ]
    }

    /// Every check an agent's operation can ask for over that universe, as
    /// the gate builds them (a target, then its relations).
    fn checks() -> Vec<Check> {
        let id = "0123456789abcdef0123456789abcdef".to_owned();
        let mut checks = vec![
            Check::literal("observe", None),
            Check::literal("state", None),
        ];
        for op in ["schedule", "terminate"] {
            for relations in [vec![], vec!["self"], vec!["children"]] {
                let mut targets = vec![id.clone()];
                targets.extend(relations.iter().map(|s| (*s).to_owned()));
                checks.push(Check {
                    operation: op,
                    targets,
                });
            }
        }
        for component in ["worker", "helper", "other"] {
            checks.push(Check::literal("spawn", Some(component)));
        }
        for (with_port, host) in [
            ("a.com:80", "a.com"),
            ("a.com:81", "a.com"),
            ("b.com:80", "b.com"),
        ] {
            checks.push(Check {
                operation: "http",
                targets: vec![with_port.to_owned(), host.to_owned()],
            });
        }
        checks
    }

    fn allows(token: &Token, check: &Check) -> bool {
        decide(
            token.biscuit(),
            EntityId::from_u128(7),
            check,
            Timestamp(0),
            &[],
        )
        .is_ok()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the sets, a token minted from their intersection
        /// allows no check that either a token of the request or a token of
        /// the approval denies (asked of the real authorizer), and every
        /// filesystem right in it lies within a requested and an approved
        /// one.
        #[test]
        fn the_install_token_never_grants_outside_the_intersection(
            requested in proptest::collection::vec(right(), 0..6),
            approved in proptest::collection::vec(right(), 0..6),
        ) {
            let root = RootKey::generate();
            let granted = intersect(&requested, &approved);
            let mint = |rights: &[Right]| Token::issue(&root, rights, &[], None).unwrap();
            let (g, q, a) = (mint(&granted), mint(&requested), mint(&approved));
            for check in checks() {
                if allows(&g, &check) {
                    prop_assert!(allows(&q, &check), "{check:?}: requested {requested:?} denies, granted {granted:?}");
                    prop_assert!(allows(&a, &check), "{check:?}: approved {approved:?} denies, granted {granted:?}");
                }
            }
            for right in &granted {
                prop_assert!(requested.iter().any(|q| covers(q, right)), "{right} not requested");
                prop_assert!(approved.iter().any(|a| covers(a, right)), "{right} not approved");
            }
            // Approving exactly what was requested grants all of it.
            let all = intersect(&requested, &requested);
            for right in &requested {
                prop_assert!(all.iter().any(|g| covers(g, right)), "{right} lost");
            }
        }
    }
}
