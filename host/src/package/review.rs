//! Reviewing a package before it is installed: who signed it (among the
//! trusted publishers), what it requests, what an upgrade asks for anew,
//! and what an operator's approval grants.

use toka_kernel::{PackageRecord, Publisher};

use crate::capability::budget::Budget;
use crate::capability::rights::Right;
use crate::package::approval::{intersect, not_held, wider_than_requested};
use crate::package::manifest::Manifest;
use crate::package::signed::{Package, PackageError, PublisherKey};

/// What an operator approves of a package's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Every right the package requests (`--yes`).
    All,
    /// These rights, each within one the package requests (`--approve`);
    /// for an upgrade, in addition to what the installed version holds.
    Rights(Vec<Right>),
    /// Nothing new: enough for an upgrade that requests nothing the
    /// installed version was not granted, or a package requesting nothing.
    Held,
}

/// A package checked against the trust store, ready for an approval.
#[derive(Debug, Clone)]
pub struct Review {
    package: Package,
    publisher: String,
    requested: Vec<Right>,
    budgets: Vec<Budget>,
    previous: Option<PackageRecord>,
    held: Vec<Right>,
}

impl Review {
    /// Checks `package`'s signature against the trusted `publishers` and
    /// its manifest's requests; `installed` is the package of the same
    /// name installed now, if any (an upgrade).
    ///
    /// # Errors
    ///
    /// [`PackageError::Unsigned`], [`PackageError::Untrusted`] (no trusted
    /// key verifies it), [`PackageError::OtherPublisher`] (an upgrade
    /// signed by another publisher), or a manifest request that does not
    /// parse.
    pub fn of(
        package: Package,
        publishers: &[Publisher],
        installed: Option<PackageRecord>,
    ) -> Result<Review, PackageError> {
        if !package.is_signed() {
            return Err(PackageError::Unsigned);
        }
        let keys: Vec<(&str, PublisherKey)> = publishers
            .iter()
            .filter_map(|p| Some((p.name.as_str(), PublisherKey::from_bytes(&p.key).ok()?)))
            .collect();
        let publisher = package
            .signed_by(keys.iter().map(|(name, key)| (*name, key)))
            .ok_or_else(|| PackageError::Untrusted {
                trusted: publishers.iter().map(|p| p.name.clone()).collect(),
            })?
            .to_owned();
        if let Some(old) = &installed
            && old.publisher != publisher
        {
            return Err(PackageError::OtherPublisher {
                package: old.name.clone(),
                installed: old.publisher.clone(),
                signed: publisher,
            });
        }
        let requested = package.manifest().requested_rights();
        let budgets = package.manifest().requested_budgets();
        // What the installed version was granted: its request (its
        // manifest is in the record) met with its approval.
        let held = installed.as_ref().map_or_else(Vec::new, |old| {
            let approved: Vec<Right> = old.approved.iter().filter_map(|r| r.parse().ok()).collect();
            Manifest::from_section(&old.manifest)
                .map(|m| intersect(&m.requested_rights(), &approved))
                .unwrap_or_default()
        });
        Ok(Review {
            package,
            publisher,
            requested,
            budgets,
            previous: installed,
            held,
        })
    }

    /// The package.
    #[must_use]
    pub fn package(&self) -> &Package {
        &self.package
    }

    /// The trusted publisher whose key verified the signature.
    #[must_use]
    pub fn publisher(&self) -> &str {
        &self.publisher
    }

    /// The rights the manifest requests.
    #[must_use]
    pub fn requested(&self) -> &[Right] {
        &self.requested
    }

    /// The budgets the manifest requests.
    #[must_use]
    pub fn budgets(&self) -> &[Budget] {
        &self.budgets
    }

    /// The installed version this would upgrade, if any.
    #[must_use]
    pub fn previous(&self) -> Option<&PackageRecord> {
        self.previous.as_ref()
    }

    /// The requested rights the installed version was not granted: all of
    /// them for a new install.
    #[must_use]
    pub fn new_rights(&self) -> Vec<Right> {
        not_held(&self.requested, &self.held)
    }

    /// The rights to record as approved for `approval`: what it names,
    /// plus (for an upgrade) what the installed version was granted and
    /// this version still requests.
    ///
    /// # Errors
    ///
    /// [`PackageError::ApprovalWidens`] for an approved right the package
    /// does not request; [`PackageError::ApprovalNeeded`] when rights the
    /// package requests anew are neither approved nor declined.
    pub fn approve(&self, approval: &Approval) -> Result<Vec<Right>, PackageError> {
        let carried = intersect(&self.requested, &self.held);
        let mut approved = match approval {
            Approval::All => self.requested.clone(),
            Approval::Rights(rights) => {
                if let Some(wide) = wider_than_requested(&self.requested, rights) {
                    return Err(PackageError::ApprovalWidens {
                        right: wide.to_string(),
                        requested: self.requested.iter().map(ToString::to_string).collect(),
                    });
                }
                carried.iter().chain(rights).cloned().collect()
            }
            Approval::Held => {
                let new = self.new_rights();
                if !new.is_empty() {
                    return Err(PackageError::ApprovalNeeded {
                        rights: new.iter().map(ToString::to_string).collect(),
                    });
                }
                carried
            }
        };
        approved.sort();
        approved.dedup();
        Ok(approved)
    }

    /// What the install token grants for `approved`: the request met with
    /// the approval.
    #[must_use]
    pub fn granted(&self, approved: &[Right]) -> Vec<Right> {
        intersect(&self.requested, approved)
    }
}
