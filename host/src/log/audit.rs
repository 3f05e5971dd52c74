//! Re-checking every authorization decision from the log alone.

use std::collections::HashMap;

use biscuit_auth::PublicKey;
use toka_kernel::{
    Authorization, Command, Denial, Digest, EntityId, Kernel, Operation, PackageRecord, Record,
    Timestamp, WorldState,
};

use crate::capability::policy::{
    Check, Denied, check_for, decide, delegation_check, lineage, operator_check, operator_level_for,
};
use crate::capability::rights::{Right, RightOp};
use crate::capability::token::Token;
use crate::log::LogError;
use crate::log::recovery::replay_with;
use crate::package::approval::intersect;
use crate::package::manifest::Manifest;
use crate::package::signed::{Package, PublisherKey};
use crate::store::event_store::EventStore;

/// What [`audit`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Records replayed.
    pub records: u64,
    /// Operations recorded as allowed by a token, re-checked.
    pub allowed: u64,
    /// Denials recorded, re-checked.
    pub denied: u64,
    /// Operators' commands (through the API), re-checked against the
    /// operator token each names.
    pub operator: u64,
    /// Package installs, re-checked: the signature by the publisher as
    /// trusted then, the manifest, and the install token as the request
    /// met with the recorded approval, bound to the component.
    pub packages: u64,
    /// Decisions that did not reproduce.
    pub mismatches: Vec<AuditMismatch>,
}

/// A recorded decision that the log does not support.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditMismatch {
    /// The record.
    pub seq: u64,
    /// What does not reproduce.
    pub problem: String,
}

/// Replays the log and re-runs every recorded authorization decision with
/// the tokens stored beside it, rooted in `root`: each operation an agent's
/// token allowed must still be allowed (with the state, time and revocations
/// as they were), every delegation must hold (the child's token is exactly the
/// parent's restricted to the recorded rights), and every recorded denial
/// must still be denied, and every package install must re-derive: a
/// signature by the publisher as the trust store held it, the recorded
/// manifest, and an install token that is exactly the request met with the
/// recorded approval, within the requested budgets, bound to the component.
///
/// # Errors
///
/// [`LogError`] when the log itself does not verify or cannot be read;
/// decisions that do not reproduce are reported, not errors.
pub fn audit(store: &dyn EventStore, root: PublicKey) -> Result<AuditReport, LogError> {
    audit_reporting(store, root, &mut |_, _| {})
}

/// [`audit`], calling `progress(done, total)` every
/// [`PROGRESS_EVERY`](crate::PROGRESS_EVERY) records and once at the end.
/// A running host may archive the log meanwhile: it is then read again
/// from the new anchor.
///
/// # Errors
///
/// As [`audit`].
pub fn audit_reporting(
    store: &dyn EventStore,
    root: PublicKey,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<AuditReport, LogError> {
    crate::log::read_whole(store, || {
        let anchor = store.anchor()?;
        let report = audit_once(store, root, TOKENS_KEPT, progress)?;
        // An archive cut meanwhile deletes the tokens of the agents gone
        // by its cut, which this read (of the log as it was) may have
        // needed: what did not reproduce is read again from the new anchor.
        if let (Some(mismatch), Some(now)) = (report.mismatches.first(), store.anchor()?)
            && Some(now) != anchor
        {
            return Err(LogError::Archived {
                seq: mismatch.seq,
                first: now.snapshot + 1,
            });
        }
        Ok(report)
    })
}

/// Tokens the audit keeps parsed at once.
const TOKENS_KEPT: usize = 4096;

/// [`audit`], keeping at most `kept` tokens parsed at once.
pub(crate) fn audit_once(
    store: &dyn EventStore,
    root: PublicKey,
    kept: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<AuditReport, LogError> {
    let total = store.head()?.seq;
    let max_token = store.limits()?.max_token as usize;
    let mut tokens: HashMap<Digest, Result<Token, String>> = HashMap::new();
    let mut load = |digest: Digest| -> Result<Token, String> {
        // The tokens of a long log are as many as the agents ever spawned:
        // at most so many are kept, then read from the store again.
        if tokens.len() >= kept && !tokens.contains_key(&digest) {
            tokens.clear();
        }
        tokens
            .entry(digest)
            .or_insert_with(|| {
                let bytes = store
                    .token(&digest)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("token {} is missing from the store", digest.short()))?;
                Token::parse_stored(&digest, &bytes, root, max_token).map_err(|e| e.to_string())
            })
            .clone()
    };
    let mut decisions = Decisions::default();
    let mut report = AuditReport::default();
    let (kernel, _) = crate::log::recovery::origin(store)?;
    replay_with(
        store,
        kernel,
        |kernel: &Kernel, bytes: &[u8]| {
            // A record that does not decode fails the replay right after this.
            let Ok(record) = Record::decode(bytes) else {
                return;
            };
            let state = kernel.state();
            let checks: Checks<'_, '_> = (&mut load, &mut decisions);
            let problem = match (&record.command.auth, &record.command.op) {
                (Authorization::Token, op) => {
                    report.allowed += 1;
                    check_allowed(state, &record.command, op, checks).err()
                }
                (Authorization::System, Operation::RecordDenial { denial }) => {
                    report.denied += 1;
                    check_denied(state, &record.command, denial, checks).err()
                }
                (Authorization::Operator(digest), op) => {
                    report.operator += 1;
                    check_operator(state, &record.command, *digest, op, checks).err()
                }
                _ => None,
            };
            let install = match &record.command.op {
                Operation::InstallPackage { package, .. } => {
                    report.packages += 1;
                    check_install(state, package, store, &mut load).err()
                }
                _ => None,
            };
            for problem in problem.into_iter().chain(install) {
                report.mismatches.push(AuditMismatch {
                    seq: record.seq,
                    problem,
                });
            }
        },
        |_, applied| {
            report.records += 1;
            if applied.seq % crate::log::verify::PROGRESS_EVERY == 0 {
                progress(applied.seq, total);
            }
        },
    )?;
    progress(report.records, total);
    Ok(report)
}

type Load<'a> = dyn FnMut(Digest) -> Result<Token, String> + 'a;

/// What a check needs: the tokens, and the decisions already made.
type Checks<'a, 'b> = (&'a mut Load<'b>, &'a mut Decisions);

/// Decisions re-run so far, by all that [`decide`] depends on: the token,
/// the origin, the check, the second and the lineage. A log's agents make
/// the same checks again and again (an agent writing one key, observing
/// one topic), and the authorizer takes ~8 µs a decision against a
/// record's replay of under 1 µs. Bounded in bytes: past
/// [`MAX_DECISION_BYTES`] it starts over.
#[derive(Default)]
struct Decisions {
    kept: HashMap<DecisionKey, Result<(), Denied>>,
    bytes: usize,
}

#[derive(PartialEq, Eq, Hash)]
struct DecisionKey {
    token: Digest,
    origin: EntityId,
    check: Check,
    second: u64,
    lineage: Vec<Digest>,
}

/// The most bytes of decisions an audit keeps.
const MAX_DECISION_BYTES: usize = 16 << 20;

impl Decisions {
    /// [`decide`], or what it decided before for the same inputs.
    fn decide(
        &mut self,
        (digest, token): (Digest, &Token),
        origin: EntityId,
        check: &Check,
        time: Timestamp,
        lineage: &[Digest],
    ) -> Result<(), Denied> {
        let key = DecisionKey {
            token: digest,
            origin,
            check: check.clone(),
            // `decide` reads the time in seconds.
            second: time.0 / 1000,
            lineage: lineage.to_vec(),
        };
        if let Some(decision) = self.kept.get(&key) {
            return decision.clone();
        }
        let decision = decide(token.biscuit(), origin, check, time, lineage);
        // The entry, its targets and lineage, the reason of a denial, and
        // as much again for the table's spare room.
        let bytes = 2 * std::mem::size_of::<(DecisionKey, Result<(), Denied>)>()
            + key
                .check
                .targets
                .iter()
                .map(|t| std::mem::size_of::<String>() + t.len())
                .sum::<usize>()
            + std::mem::size_of_val(key.lineage.as_slice())
            + decision.as_ref().err().map_or(0, |d| d.0.len());
        if self.bytes + bytes > MAX_DECISION_BYTES {
            self.kept.clear();
            self.bytes = 0;
        }
        self.bytes += bytes;
        self.kept.insert(key, decision.clone());
        decision
    }
}

/// The token of `command`'s origin agent (and its digest), and whether it
/// was revoked then.
fn origin_token(
    state: &WorldState,
    command: &Command,
    load: &mut Load<'_>,
) -> Result<(Digest, Token, bool), String> {
    let agent = state
        .agent(command.origin)
        .ok_or_else(|| format!("the origin {} is not an agent", command.origin))?;
    let token = load(agent.token)?;
    let revoked = token.revocation_ids().iter().any(|id| state.is_revoked(id));
    Ok((agent.token, token, revoked))
}

/// An operator's command: its token, not revoked then, allowed the level
/// the operation needs at the command's time.
fn check_operator(
    state: &WorldState,
    command: &Command,
    digest: Digest,
    op: &Operation,
    (load, decisions): Checks<'_, '_>,
) -> Result<(), String> {
    let token = load(digest)?;
    if token.revocation_ids().iter().any(|id| state.is_revoked(id)) {
        return Err("an operator's command although its token was revoked".into());
    }
    let level = operator_level_for(op)
        .ok_or_else(|| format!("{} is not an operator's operation", op.kind()))?;
    decisions
        .decide(
            (digest, &token),
            command.origin,
            &operator_check(level),
            command.time,
            &[],
        )
        .map_err(|reason| {
            format!("recorded as an operator's command, but the token denies {level}: {reason}")
        })
}

fn check_allowed(
    state: &WorldState,
    command: &Command,
    op: &Operation,
    (load, decisions): Checks<'_, '_>,
) -> Result<(), String> {
    let (digest, token, revoked) = origin_token(state, command, load)?;
    if revoked {
        return Err("allowed although the agent's token was revoked".into());
    }
    let check = check_for(op, command.origin, state)
        .ok_or_else(|| format!("{} carries a token but is a host operation", op.kind()))?;
    let lineage = lineage(command.origin, state);
    let mut decide = |check: &Check| {
        let (origin, time) = (command.origin, command.time);
        decisions.decide((digest, &token), origin, check, time, &lineage)
    };
    decide(&check)
        .map_err(|reason| format!("recorded as allowed, but the token denies it: {reason}"))?;
    let Some(spec) = op.spawned() else {
        return Ok(());
    };
    for text in &spec.rights {
        let right: Right = text
            .parse()
            .map_err(|e| format!("recorded delegation: {e}"))?;
        decide(&delegation_check(&right, command.origin, state)).map_err(|reason| {
            format!("delegated `{right}` although the parent may not: {reason}")
        })?;
    }
    let child = load(spec.token)?;
    if let Operation::SpawnAgentSized { token_bytes, .. } = op
        && *token_bytes as usize != child.bytes().len()
    {
        return Err(format!(
            "the spawn was charged for a token of {token_bytes} bytes, but the child's token holds {}",
            child.bytes().len()
        ));
    }
    let parent_ids = token.revocation_ids();
    let child_ids = child.revocation_ids();
    let mut delegated = child.delegated_rights().unwrap_or_default();
    let mut recorded = spec.rights.clone();
    delegated.sort();
    recorded.sort();
    if child_ids.len() != parent_ids.len() + 1
        || child_ids[..parent_ids.len()] != parent_ids[..]
        || delegated != recorded
    {
        return Err(
            "the child's token is not the parent's token restricted to the recorded rights".into(),
        );
    }
    Ok(())
}

fn check_denied(
    state: &WorldState,
    command: &Command,
    denial: &Denial,
    (load, decisions): Checks<'_, '_>,
) -> Result<(), String> {
    let (digest, token, revoked) = origin_token(state, command, load)?;
    let operation = RightOp::from_name(&denial.operation)
        .ok_or_else(|| format!("denial of an unknown operation `{}`", denial.operation))?
        .name();
    let check = Check {
        operation,
        targets: denial.targets.clone(),
    };
    let lineage = lineage(command.origin, state);
    if revoked
        || decisions
            .decide(
                (digest, &token),
                command.origin,
                &check,
                command.time,
                &lineage,
            )
            .is_err()
    {
        Ok(())
    } else {
        Err(format!(
            "recorded as denied ({}), but the token allows it",
            denial.reason
        ))
    }
}

/// A package install: the stored component verifies with the publisher's
/// key as trusted before the record, carries the recorded manifest and
/// signed hash, and the install token grants exactly the request met with
/// the approval, within the requested budgets, bound to the component.
fn check_install(
    state: &WorldState,
    package: &PackageRecord,
    store: &dyn EventStore,
    load: &mut Load<'_>,
) -> Result<(), String> {
    let publisher = state.publisher(&package.publisher).ok_or_else(|| {
        format!(
            "installed from `{}`, which was not trusted",
            package.publisher
        )
    })?;
    let key = PublisherKey::from_bytes(&publisher.key)
        .map_err(|e| format!("publisher `{}`'s recorded key: {e}", publisher.name))?;
    let bytes = store
        .blob(&package.component)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "component {} is missing from the store",
                package.component.short()
            )
        })?;
    let signed = Package::read(bytes).map_err(|e| format!("the installed package: {e}"))?;
    signed
        .verify(&key)
        .map_err(|e| format!("the installed package: {e}"))?;
    let manifest = Manifest::from_section(&package.manifest)
        .map_err(|e| format!("the recorded manifest: {e}"))?;
    if *signed.manifest() != manifest || signed.signed_hash() != package.signed_hash {
        return Err("the recorded manifest or signed hash is not the signed package's".into());
    }
    let approved: Vec<Right> = package
        .approved
        .iter()
        .map(|r| r.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the recorded approval: {e}"))?;
    let token = load(package.token)?;
    let mut expected = intersect(&manifest.requested_rights(), &approved);
    let mut granted = token.authority_rights();
    expected.sort();
    granted.sort();
    let budgets = token.budgets().map_err(|e| e.to_string())?;
    let mut requested = manifest.requested_budgets();
    requested.sort();
    if granted != expected
        || budgets != requested
        || token.block_sources().len() != 1
        || token.bound_component() != Some(package.component)
        || token.revocation_ids() != package.revocation_ids
    {
        return Err(format!(
            "the install token is not the request met with the approval (grants {}, expected {}), bound to the component",
            join(&granted),
            join(&expected)
        ));
    }
    Ok(())
}

fn join(rights: &[Right]) -> String {
    let texts: Vec<String> = rights.iter().map(ToString::to_string).collect();
    if texts.is_empty() {
        "nothing".into()
    } else {
        texts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use toka_kernel::{Digest, EntityId, Timestamp};

    use super::{Decisions, decide};
    use crate::capability::policy::Check;
    use crate::capability::root_key::RootKey;
    use crate::capability::token::Token;

    #[test]
    fn kept_decisions_are_the_authorizer_s_for_every_input_they_depend_on() {
        // A token that expires 10 s past the epoch: a kept decision must
        // not outlive the second it was made for, nor answer for another
        // origin, check or lineage.
        let root = RootKey::generate();
        let rights = [
            "observe".parse().unwrap(),
            "schedule children".parse().unwrap(),
        ];
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let token = Token::issue(&root, &rights, &[], Some(expires)).unwrap();
        let digest = token.digest();
        let checks = [
            Check::literal("observe", None),
            Check::literal("state", None),
            Check {
                operation: "schedule",
                targets: vec![EntityId::from_u128(10).to_string(), "children".into()],
            },
        ];
        let mut decisions = Decisions::default();
        let (mut allowed, mut denied) = (0, 0);
        // Each input twice in a row: the second is answered from what was
        // kept.
        for time in [0, 9_999, 10_000, 10_999, 11_000, 20_000].map(Timestamp) {
            for origin in [9, 10].map(EntityId::from_u128) {
                for check in &checks {
                    for lineage in [vec![], vec![Digest::of(b"component")]] {
                        let fresh = decide(token.biscuit(), origin, check, time, &lineage);
                        for _ in 0..2 {
                            let kept =
                                decisions.decide((digest, &token), origin, check, time, &lineage);
                            assert_eq!(kept, fresh, "{check:?} at {time:?} by {origin}");
                        }
                        if fresh.is_ok() {
                            allowed += 1
                        } else {
                            denied += 1
                        }
                    }
                }
            }
        }
        assert!(
            allowed > 0 && denied > 0,
            "{allowed} allowed, {denied} denied"
        );
        // The token's expiry, as the kept decisions saw it: the same check
        // allowed through its last second, denied after.
        let observe = &checks[0];
        let origin = EntityId::from_u128(9);
        for (time, allowed) in [(10_999, true), (11_000, false)] {
            let kept = decisions.decide((digest, &token), origin, observe, Timestamp(time), &[]);
            assert_eq!(kept.is_ok(), allowed, "observe at {time} ms");
        }
    }

    /// A batch of one command by `origin` (the system, or an agent
    /// authorized by its token) applying `op`, storing `token`.
    fn applied(
        kernel: &mut toka_kernel::Kernel,
        origin: EntityId,
        op: toka_kernel::Operation,
        token: Option<&Token>,
    ) -> crate::store::event_store::Batch {
        let time = Timestamp(kernel.head().seq);
        let mut command = toka_kernel::Command::system(origin, time, op);
        if origin != EntityId::SYSTEM {
            command.auth = toka_kernel::Authorization::Token;
        }
        let applied = kernel.apply(command).unwrap();
        let mut batch = crate::store::event_store::Batch::default();
        batch.records.push((applied.seq, applied.bytes));
        if let Some(token) = token {
            batch
                .tokens
                .push((token.digest(), std::sync::Arc::clone(token.bytes())));
        }
        batch.head = kernel.head();
        batch
    }

    #[test]
    fn an_audit_the_log_was_archived_under_is_read_again_from_the_new_anchor() {
        use crate::store::event_store::EventStore;
        use toka_kernel::{AgentSpec, ComponentSpec, Kernel, Limits, Operation};

        let root = RootKey::generate();
        let store = crate::store::memory::MemoryStore::new(Limits::default());
        let mut kernel = Kernel::new(Limits::default());
        let component = Box::new(ComponentSpec {
            digest: Digest::of(b"agent"),
            name: "agent".into(),
            size: 5,
        });
        let mut batch = applied(
            &mut kernel,
            EntityId::SYSTEM,
            Operation::InstallComponent { component },
            None,
        );
        batch
            .blobs
            .push((Digest::of(b"agent"), std::sync::Arc::from(&b"agent"[..])));
        store.append(batch).unwrap();
        let spawn = |kernel: &mut Kernel, name: &str| {
            let token = Token::issue(&root, &["observe".parse().unwrap()], &[], None).unwrap();
            let spec = Box::new(AgentSpec {
                component: Digest::of(b"agent"),
                name: name.into(),
                token: token.digest(),
                rights: Vec::new(),
            });
            let op = Operation::SpawnAgent { spec };
            store
                .append(applied(kernel, EntityId::SYSTEM, op, Some(&token)))
                .unwrap();
            let (id, _) = kernel
                .state()
                .agents()
                .find(|(_, a)| a.name == name)
                .unwrap();
            (id, token)
        };
        let observe = |kernel: &mut Kernel, agent: EntityId| {
            let op = Operation::EmitObservation {
                topic: None,
                data: vec![1],
            };
            applied(kernel, agent, op, None)
        };
        // More records than the audit reports progress after, then an
        // agent whose operations come after that report, forgotten.
        let (a, _) = spawn(&mut kernel, "a");
        for _ in 0..crate::log::verify::PROGRESS_EVERY {
            store.append(observe(&mut kernel, a)).unwrap();
        }
        let (b, _) = spawn(&mut kernel, "b");
        store.append(observe(&mut kernel, b)).unwrap();
        let reason = "done".to_owned();
        let terminate = Operation::TerminateAgent { agent: b, reason };
        for op in [terminate, Operation::ForgetTerminated] {
            store
                .append(applied(&mut kernel, EntityId::SYSTEM, op, None))
                .unwrap();
        }
        // The archive is cut while the audit reads the records before it
        // (as a running host's archive job may be): `b`'s token goes.
        let dir = tempfile::tempdir().unwrap();
        let mut archived = None;
        let report = super::audit_reporting(&store, root.public(), &mut |done, _| {
            if done == crate::log::verify::PROGRESS_EVERY && archived.is_none() {
                let written =
                    crate::log::archive::write(&store, &dir.path().join("a"), 0, &mut |_, _| {
                        std::ops::ControlFlow::Continue(())
                    })
                    .unwrap();
                archived = Some(written.cut(&store).unwrap());
            }
        })
        .unwrap();
        assert_eq!(archived.map(|a| a.tokens_dropped), Some(1));
        assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    }

    #[test]
    fn a_spawn_charged_for_another_size_than_its_child_s_token_is_named() {
        use crate::store::event_store::EventStore;
        use toka_kernel::{AgentSpec, ComponentSpec, Kernel, Limits, Operation};

        let root = RootKey::generate();
        let store = crate::store::memory::MemoryStore::new(Limits::default());
        let mut kernel = Kernel::new(Limits::default());
        let digest = Digest::of(b"agent");
        let component = Box::new(ComponentSpec {
            digest,
            name: "agent".into(),
            size: 5,
        });
        let op = Operation::InstallComponent { component };
        let mut batch = applied(&mut kernel, EntityId::SYSTEM, op, None);
        batch
            .blobs
            .push((digest, std::sync::Arc::from(&b"agent"[..])));
        store.append(batch).unwrap();
        // A spawn by `origin` of an agent bound to `token`, charged for
        // `token_bytes`.
        let spawn = |kernel: &mut Kernel, origin: EntityId, token: &Token, token_bytes: u32| {
            let name = format!("agent-{}", kernel.head().seq);
            let spec = Box::new(AgentSpec {
                component: digest,
                name: name.clone(),
                token: token.digest(),
                rights: Vec::new(),
            });
            let op = Operation::SpawnAgentSized { spec, token_bytes };
            let batch = applied(kernel, origin, op, Some(token));
            store.append(batch).unwrap();
            let mut agents = kernel.state().agents();
            agents.find(|(_, a)| a.name == name).unwrap().0
        };
        let parent = Token::issue(&root, &["spawn agent".parse().unwrap()], &[], None).unwrap();
        let parent_id = spawn(&mut kernel, EntityId::SYSTEM, &parent, 0);
        let size = |t: &Token| u32::try_from(t.bytes().len()).unwrap();
        let child = parent.attenuate(&[], &[]).unwrap();
        spawn(&mut kernel, parent_id, &child, size(&child));
        let report = super::audit(&store, root.public()).unwrap();
        assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
        // A record charging the parent's tree one byte less than it stored.
        let short = parent.attenuate(&[], &[]).unwrap();
        let seq = kernel.head().seq + 1;
        spawn(&mut kernel, parent_id, &short, size(&short) - 1);
        let report = super::audit(&store, root.public()).unwrap();
        assert_eq!(report.mismatches.len(), 1, "{:?}", report.mismatches);
        let mismatch = &report.mismatches[0];
        assert_eq!(mismatch.seq, seq);
        assert!(
            mismatch.problem.starts_with(&format!(
                "the spawn was charged for a token of {} bytes, but the child's token holds {}",
                size(&short) - 1,
                size(&short)
            )),
            "{mismatch:?}"
        );
    }

    #[test]
    fn kept_decisions_stay_within_their_bytes() {
        let root = RootKey::generate();
        let token = Token::issue(&root, &["observe".parse().unwrap()], &[], None).unwrap();
        let mut decisions = Decisions::default();
        for i in 0..20_000 {
            let check = Check {
                operation: "schedule",
                targets: vec![format!("{i}-{}", "x".repeat(2_000))],
            };
            let origin = EntityId::from_u128(9);
            let _ = decisions.decide((token.digest(), &token), origin, &check, Timestamp(0), &[]);
            assert!(decisions.bytes <= super::MAX_DECISION_BYTES);
        }
        assert!(decisions.kept.len() < 20_000, "nothing was let go");
    }
}
