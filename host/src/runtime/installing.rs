//! The operator's side of packages: the trust store, installing (and
//! upgrading) a reviewed package with an approval, uninstalling, and
//! spawning an installed package's agent with its install token.
//!
//! Everything here is an operator command (`admin` through the API, but
//! spawning, which needs `write`): checked in full before anything is
//! recorded, then one record each.

use std::sync::Arc;

use toka_kernel::{AgentId, AgentSpec, ComponentSpec, Operation, PackageRecord, Publisher};

use crate::capability::budget::{Budget, kernel_budgets};
use crate::capability::rights::{OperatorLevel, Right};
use crate::capability::token::Token;
use crate::package::approval::covers;
use crate::package::review::{Approval, Review};
use crate::package::signed::{Package, PackageError, PublisherKey};
use crate::runtime::acting::Acting;
use crate::runtime::error::HostError;
use crate::runtime::sequencer::Attachments;

/// What an install recorded, and the token it minted.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The record, as the log and the state keep it.
    pub record: PackageRecord,
    /// The rights the install token grants.
    pub granted: Vec<Right>,
    /// The version it replaced, for an upgrade.
    pub previous: Option<String>,
    /// The agents of the previous version, now running this one.
    pub rebound: usize,
}

impl Acting<'_> {
    /// Adds a publisher's key to the trust store under `name`.
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when the name or the key is trusted already
    /// or the name is not acceptable; [`HostError::Denied`] for an operator
    /// without `admin`.
    pub async fn trust(&self, name: &str, key: &PublisherKey) -> Result<(), HostError> {
        self.require(OperatorLevel::Admin)?;
        let publisher = Publisher {
            name: name.to_owned(),
            key: key.to_bytes(),
        };
        self.submit(
            Operation::TrustPublisher { publisher },
            Attachments::default(),
        )
        .await
        .map(drop)
    }

    /// Removes a publisher from the trust store: its packages' install
    /// tokens are revoked (every agent holding
    /// one, or a token attenuated from one, is denied from its next
    /// operation on). Returns its packages.
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when no publisher has that name;
    /// [`HostError::Denied`] for an operator without `admin`.
    pub async fn distrust(&self, name: &str) -> Result<Vec<String>, HostError> {
        self.require(OperatorLevel::Admin)?;
        let packages = self.host.applied(|s| {
            s.packages()
                .filter(|p| p.publisher == name)
                .map(|p| p.name.clone())
                .collect()
        });
        let op = Operation::DistrustPublisher {
            name: name.to_owned(),
        };
        self.submit(op, Attachments::default()).await?;
        Ok(packages)
    }

    /// Reviews a package against the trust store: its signature by a
    /// trusted publisher, what it requests, and what an upgrade of the
    /// installed version of the same name asks for anew. Records nothing.
    ///
    /// # Errors
    ///
    /// [`HostError::Package`] naming what is wrong with the package.
    pub fn review(&self, bytes: Vec<u8>) -> Result<Review, HostError> {
        let package = Package::read(bytes)?;
        let name = package.manifest().name.clone();
        let (publishers, installed) = self.host.applied(|s| {
            (
                s.publishers().cloned().collect::<Vec<_>>(),
                // A revoked package is replaced, not upgraded.
                s.package(&name).filter(|p| !s.package_revoked(p)).cloned(),
            )
        });
        Ok(Review::of(package, &publishers, installed)?)
    }

    /// Installs a reviewed package with `approval`: checks the approval
    /// (it may narrow the request, never widen it), compiles the component
    /// (it must be a Toka agent), mints the install token — the request met
    /// with the approval, within the requested budgets, bound to the
    /// component's digest — and records the install, the component and
    /// the approval in one record. For an upgrade, the installed version's
    /// agents run the new component from their next task, with their
    /// state, and its token is revoked.
    ///
    /// # Errors
    ///
    /// [`HostError::Package`] for an approval that widens or is missing;
    /// [`HostError::Component`] when the package is not an agent
    /// component; [`HostError::ProtectedPath`] when a granted `fs.*` right
    /// reaches the data dir; [`HostError::Kernel`] when the publisher was
    /// removed or the same version is installed; [`HostError::Denied`]
    /// for an operator without `admin`. Nothing is recorded then.
    pub async fn install_package(
        &self,
        review: &Review,
        approval: &Approval,
    ) -> Result<Installed, HostError> {
        self.require(OperatorLevel::Admin)?;
        let approved = review.approve(approval)?;
        let granted = review.granted(&approved);
        self.host.check_agent_rights(&granted)?;
        let package = review.package();
        let manifest = package.manifest();
        toka_kernel::validate_name("package", &manifest.name, &self.host.state_limits())?;
        let digest = package.digest();
        let bytes: Arc<[u8]> = package.bytes().into();
        self.host.compile(digest, Arc::clone(&bytes)).await?;
        let token = Token::issue_bound(self.host.root, &granted, review.budgets(), digest)?;
        let record = PackageRecord {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            publisher: review.publisher().to_owned(),
            component: digest,
            signed_hash: package.signed_hash(),
            manifest: manifest.to_section(),
            approved: approved.iter().map(ToString::to_string).collect(),
            token: token.digest(),
            revocation_ids: token.revocation_ids(),
            budgets: kernel_budgets(review.budgets()),
        };
        let component = ComponentSpec {
            digest,
            name: manifest.name.clone(),
            size: bytes.len() as u64,
        };
        let op = Operation::InstallPackage {
            component: Box::new(component),
            package: Box::new(record.clone()),
        };
        let attachments = Attachments {
            blob: Some((digest, bytes)),
            token: Some(token),
            ..Attachments::default()
        };
        let previous = review.previous().map(|p| p.version.clone());
        self.submit(op, attachments).await?;
        let rebound = self
            .host
            .applied(|s| s.agents().filter(|(_, a)| a.token == record.token).count());
        Ok(Installed {
            record,
            granted,
            previous,
            rebound,
        })
    }

    /// Uninstalls a package: its agents are terminated and its install
    /// token revoked.
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when no package has that name;
    /// [`HostError::Denied`] for an operator without `admin`.
    pub async fn uninstall(&self, name: &str) -> Result<(), HostError> {
        self.require(OperatorLevel::Admin)?;
        let op = Operation::UninstallPackage {
            name: name.to_owned(),
        };
        self.submit(op, Attachments::default()).await.map(drop)
    }

    /// Spawns a root agent of the installed package `package`, bound to its
    /// install token — attenuated to `rights` and `budgets` when given.
    ///
    /// # Errors
    ///
    /// [`HostError::Package`] when no such package is installed, or a
    /// right is asked for that its token does not grant (named);
    /// [`HostError::Kernel`] for a name the kernel refuses;
    /// [`HostError::Denied`] for an operator without `write`.
    pub async fn spawn_package(
        &self,
        package: &str,
        name: &str,
        rights: Option<&[Right]>,
        budgets: &[Budget],
    ) -> Result<AgentId, HostError> {
        toka_kernel::validate_name("agent", name, &self.host.state_limits())?;
        self.require(OperatorLevel::Write)?;
        let record = self
            .host
            .applied(|s| s.package(package).cloned())
            .ok_or_else(|| PackageError::NotInstalled(package.to_owned()))?;
        let install = self.host.inner.sequencer.token(&record.token)?;
        if self.host.is_revoked(&install) {
            return Err(PackageError::Revoked(package.to_owned()).into());
        }
        let token = match rights {
            Some(rights) => {
                let granted = install.authority_rights();
                if let Some(right) = rights
                    .iter()
                    .find(|r| !granted.iter().any(|g| covers(g, r)))
                {
                    return Err(PackageError::NotGranted {
                        package: package.to_owned(),
                        right: right.to_string(),
                        granted: granted.iter().map(ToString::to_string).collect(),
                    }
                    .into());
                }
                install.attenuate(rights, budgets)?
            }
            None if budgets.is_empty() => install,
            None => install.limit(budgets)?,
        };
        let budgets = kernel_budgets(&token.budgets()?);
        let spec = AgentSpec {
            component: record.component,
            name: name.to_owned(),
            token: token.digest(),
            rights: Vec::new(),
        };
        let sequencer = &self.host.inner.sequencer;
        let receipt = sequencer
            .spawn_root(&self.by, spec, token, budgets)
            .await??;
        sequencer.wait_durable(receipt.seq).await?;
        receipt
            .created
            .ok_or_else(|| HostError::Wasmtime("the kernel reported no created entity".into()))
    }
}
