//! Packages and the trust store: which publishers the operator trusts, and
//! what each installed package asked for, was granted and is bound to.
//!
//! The kernel keeps the facts and their consequences in order: a package
//! installs only from a trusted publisher and an installed component; an
//! upgrade by the same publisher rebinds the package's agents (their state
//! stays); uninstalling a package or distrusting its publisher revokes its
//! install token in the same record. Checking the signature and minting the
//! token are the host's (the kernel does no cryptography); the auditor
//! re-checks them from the log.

use serde::{Deserialize, Serialize};

use crate::apply::{MAX_REVOCATION_ID, check_size};
use crate::error::{EntityKind, KernelError};
use crate::event::Event;
use crate::id::{AgentId, Digest, EntityId};
use crate::limits::{Limit, Limits};
use crate::operation::{ComponentSpec, OpKind};
use crate::rules::Budgets;
use crate::state::WorldState;

/// The largest manifest a package record may carry, in bytes.
pub const MAX_MANIFEST: usize = 64 * 1024;

/// The most rights a package may request or an operator approve.
pub const MAX_PACKAGE_RIGHTS: usize = 64;

/// The largest publisher key, in bytes (an Ed25519 key is 32, with its
/// type byte 33).
const MAX_PUBLISHER_KEY: usize = 64;

/// The most revocation ids an install token may carry.
const MAX_REVOCATION_IDS: usize = 16;

/// A publisher the operator trusts to sign packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publisher {
    /// The operator's name for it (`toka trust add NAME`).
    pub name: String,
    /// Its public key, as the host encodes it.
    #[serde(with = "crate::serde_bytes")]
    pub key: Vec<u8>,
}

/// An installed package: who signed which component, what its manifest
/// asked for, what the operator approved, and the install token minted
/// from the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    /// The manifest's name; `toka run NAME` runs it.
    pub name: String,
    /// The manifest's version.
    pub version: String,
    /// The trusted publisher (its trust-store name) whose key signed it.
    pub publisher: String,
    /// The kernel's digest of the package's bytes: the installed component.
    pub component: Digest,
    /// The hash the signature covers (hex), as the signature names it.
    pub signed_hash: String,
    /// The manifest, as the package's `toka:manifest` section holds it.
    #[serde(with = "crate::serde_bytes")]
    pub manifest: Vec<u8>,
    /// The rights the operator approved (right strings, as `--grant` takes
    /// them).
    pub approved: Vec<String>,
    /// The install token's digest.
    pub token: Digest,
    /// The install token's revocation ids.
    pub revocation_ids: Vec<Vec<u8>>,
    /// The install token's budgets, set on the package's agents.
    pub budgets: Budgets,
}

impl WorldState {
    /// A trusted publisher.
    #[must_use]
    pub fn publisher(&self, name: &str) -> Option<&Publisher> {
        self.publishers.get(name)
    }

    /// The trusted publishers, by name.
    pub fn publishers(&self) -> impl ExactSizeIterator<Item = &Publisher> {
        self.publishers.values()
    }

    /// An installed package.
    #[must_use]
    pub fn package(&self, name: &str) -> Option<&PackageRecord> {
        self.packages.get(name)
    }

    /// The installed packages, by name.
    pub fn packages(&self) -> impl ExactSizeIterator<Item = &PackageRecord> {
        self.packages.values()
    }

    /// The installed package whose component is `digest`, if any.
    #[must_use]
    pub fn package_of(&self, digest: &Digest) -> Option<&PackageRecord> {
        self.packages.values().find(|p| p.component == *digest)
    }

    pub(crate) fn trust_publisher(
        &mut self,
        publisher: Publisher,
        limits: &Limits,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::TrustPublisher;
        self.check_name(KIND, "publisher", &publisher.name, limits)?;
        if publisher.key.is_empty() || publisher.key.len() > MAX_PUBLISHER_KEY {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "a publisher key has 1 to {MAX_PUBLISHER_KEY} bytes, got {}",
                    publisher.key.len()
                ),
            ));
        }
        if self.publishers.contains_key(&publisher.name) {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "publisher `{}` is already trusted (remove it first to change its key)",
                    publisher.name
                ),
            ));
        }
        if let Some(same) = self.publishers.values().find(|p| p.key == publisher.key) {
            return Err(KernelError::invalid(
                KIND,
                format!("this key is already trusted as `{}`", same.name),
            ));
        }
        self.publishers
            .insert(publisher.name.clone(), publisher.clone());
        Ok(vec![Event::PublisherTrusted { publisher }])
    }

    pub(crate) fn distrust_publisher(&mut self, name: String) -> Result<Vec<Event>, KernelError> {
        if self.publishers.remove(&name).is_none() {
            return Err(KernelError::unknown(EntityKind::Publisher, &name));
        }
        // Its packages stay recorded (an agent of one is denied from its
        // next operation on, and can be uninstalled), with their tokens
        // revoked.
        let ids: Vec<(String, Vec<Vec<u8>>)> = self
            .packages
            .values()
            .filter(|p| p.publisher == name)
            .map(|p| (p.name.clone(), p.revocation_ids.clone()))
            .collect();
        let mut events = vec![Event::PublisherDistrusted {
            name,
            packages: ids.iter().map(|(n, _)| n.clone()).collect(),
        }];
        for (_, revocation_ids) in &ids {
            events.extend(self.revoke_all(revocation_ids));
        }
        Ok(events)
    }

    /// Whether a package's install token is revoked (its publisher was
    /// removed from the trust store).
    #[must_use]
    pub fn package_revoked(&self, package: &PackageRecord) -> bool {
        package
            .revocation_ids
            .iter()
            .any(|id| self.revoked.contains(id))
    }

    pub(crate) fn install_package(
        &mut self,
        component: ComponentSpec,
        package: PackageRecord,
        limits: &Limits,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::InstallPackage;
        self.check_name(KIND, "package", &package.name, limits)?;
        self.check_name(KIND, "version", &package.version, limits)?;
        check_size(Limit::Name, limits.max_name, package.signed_hash.len())?;
        if package.manifest.len() > MAX_MANIFEST {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "the manifest has {} bytes; at most {MAX_MANIFEST} are accepted",
                    package.manifest.len()
                ),
            ));
        }
        if package.approved.len() > MAX_PACKAGE_RIGHTS {
            return Err(KernelError::invalid(
                KIND,
                format!("at most {MAX_PACKAGE_RIGHTS} rights may be approved"),
            ));
        }
        for right in &package.approved {
            check_size(Limit::Name, limits.max_name, right.len())?;
        }
        if package.revocation_ids.is_empty()
            || package.revocation_ids.len() > MAX_REVOCATION_IDS
            || package
                .revocation_ids
                .iter()
                .any(|id| id.is_empty() || id.len() > MAX_REVOCATION_ID)
        {
            return Err(KernelError::invalid(
                KIND,
                "the install token's revocation ids are missing or malformed",
            ));
        }
        if !self.publishers.contains_key(&package.publisher) {
            return Err(KernelError::unknown(
                EntityKind::Publisher,
                &package.publisher,
            ));
        }
        if component.digest != package.component {
            return Err(KernelError::invalid(
                KIND,
                "the package names another component than the one installed with it",
            ));
        }
        let install = !self.components.contains_key(&component.digest);
        if install {
            self.check_name(KIND, "component", &component.name, limits)?;
        }
        if let Some(other) = self
            .packages
            .values()
            .find(|p| p.component == package.component && p.name != package.name)
        {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "this component is already installed as package `{}`",
                    other.name
                ),
            ));
        }
        let previous = match self.packages.get(&package.name) {
            Some(old) if old.publisher != package.publisher => {
                return Err(KernelError::invalid(
                    KIND,
                    format!(
                        "package `{}` is installed from publisher `{}`, not `{}`; uninstall it first",
                        package.name, old.publisher, package.publisher
                    ),
                ));
            }
            // A package whose token was revoked (its publisher was removed)
            // is replaced, not upgraded: its agents stay revoked.
            Some(old) if self.package_revoked(old) => None,
            Some(old) if old.component == package.component => {
                return Err(KernelError::invalid(
                    KIND,
                    format!(
                        "package `{}` {} is already installed",
                        package.name, old.version
                    ),
                ));
            }
            Some(old) => Some(old.clone()),
            None => None,
        };
        let replaced = self
            .packages
            .get(&package.name)
            .map(|old| old.component)
            .filter(|old| *old != package.component);
        let mut events = Vec::new();
        if install {
            events.push(self.add_component(component));
        }
        events.push(Event::PackageInstalled {
            package: Box::new(package.clone()),
            previous: previous.as_ref().map(|p| p.version.clone()),
        });
        if let Some(old) = &previous {
            // The upgrade: the old version's agents run the new component,
            // bound to the new token, with their state as it is.
            let bound: Vec<AgentId> = self
                .agents
                .iter()
                .filter(|(_, a)| a.token == old.token && !a.is_terminated())
                .map(|(id, _)| *id)
                .collect();
            for agent in bound {
                let a = self
                    .agents
                    .get_mut(&agent)
                    .expect("the ids were collected from the map just above");
                a.component = package.component;
                a.token = package.token;
                a.budgets =
                    (package.budgets != Budgets::default()).then(|| Box::new(package.budgets));
                events.push(Event::AgentRebound {
                    agent,
                    component: package.component,
                    token: package.token,
                });
            }
            events.extend(self.revoke_all(&old.revocation_ids));
        }
        self.packages.insert(package.name.clone(), package);
        events.extend(replaced.and_then(|old| self.release_component(&old)));
        Ok(events)
    }

    pub(crate) fn uninstall_package(
        &mut self,
        origin: EntityId,
        name: String,
    ) -> Result<Vec<Event>, KernelError> {
        let Some(record) = self.packages.remove(&name) else {
            return Err(KernelError::unknown(EntityKind::Package, &name));
        };
        let mut events = vec![Event::PackageUninstalled { name: name.clone() }];
        let bound: Vec<AgentId> = self
            .agents
            .iter()
            .filter(|(_, a)| a.token == record.token && !a.is_terminated())
            .map(|(id, _)| *id)
            .collect();
        for agent in bound {
            events.extend(self.terminate(origin, agent, format!("package `{name}` uninstalled")));
        }
        events.extend(self.revoke_all(&record.revocation_ids));
        events.extend(self.release_component(&record.component));
        Ok(events)
    }

    /// Revokes each id not revoked yet.
    fn revoke_all(&mut self, ids: &[Vec<u8>]) -> Vec<Event> {
        ids.iter()
            .filter(|id| self.revoked.insert((*id).clone()))
            .map(|id| Event::TokenRevoked {
                revocation_id: id.clone(),
            })
            .collect()
    }
}
