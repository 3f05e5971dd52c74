//! Installed components: the operator installs and removes them; a
//! package's component comes with the package and (rules 3 and on) leaves
//! with it.

use crate::apply::denied;
use crate::error::{EntityKind, KernelError};
use crate::event::Event;
use crate::id::{Digest, EntityId};
use crate::limits::Limits;
use crate::operation::{ComponentSpec, OpKind};
use crate::state::WorldState;

impl WorldState {
    pub(crate) fn install_component(
        &mut self,
        origin: EntityId,
        component: ComponentSpec,
        limits: &Limits,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::InstallComponent;
        if origin != EntityId::SYSTEM {
            return Err(denied(
                origin,
                KIND,
                "only the operator installs components",
            ));
        }
        self.check_name(KIND, "component", &component.name, limits)?;
        if let Some(existing) = self.components.get(&component.digest) {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "component {} is already installed as `{}`",
                    component.digest.short(),
                    existing.name
                ),
            ));
        }
        Ok(vec![self.add_component(component)])
    }

    /// Adds `component` (not installed yet) and points its name at it.
    pub(crate) fn add_component(&mut self, component: ComponentSpec) -> Event {
        self.component_names
            .insert(component.name.clone(), component.digest);
        self.components.insert(component.digest, component.clone());
        Event::ComponentInstalled { component }
    }

    pub(crate) fn remove_component(
        &mut self,
        origin: EntityId,
        digest: Digest,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::RemoveComponent;
        if origin != EntityId::SYSTEM {
            return Err(denied(origin, KIND, "only the operator removes components"));
        }
        let Some(component) = self.components.get(&digest) else {
            return Err(KernelError::unknown(EntityKind::Component, digest));
        };
        if let Some(user) = self.user_of(&digest) {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "component `{}` ({}) is in use: {user}",
                    component.name,
                    digest.short()
                ),
            ));
        }
        Ok(vec![self.drop_component(&digest)])
    }

    /// Rules 3 and on: removes the component a package shipped until it was
    /// upgraded or uninstalled, unless something still uses it (an agent
    /// that is not terminated runs it, or another package ships it).
    pub(crate) fn release_component(&mut self, digest: &Digest) -> Option<Event> {
        (self.rules_version() >= 3
            && self.components.contains_key(digest)
            && self.user_of(digest).is_none())
        .then(|| self.drop_component(digest))
    }

    /// What keeps `digest` installed, in words: a package shipping it, or
    /// the agents that are not terminated running it (a scan of all agents:
    /// removing a component is the operator's, and rare).
    fn user_of(&self, digest: &Digest) -> Option<String> {
        if let Some(package) = self.packages.values().find(|p| p.component == *digest) {
            return Some(format!(
                "package `{}` ships it (uninstall the package)",
                package.name
            ));
        }
        let mut running = self
            .agents
            .iter()
            .filter(|(_, a)| a.component == *digest && !a.is_terminated())
            .map(|(id, _)| *id);
        let first = running.next()?;
        Some(match running.count() {
            0 => format!("agent {first} runs it (terminate it first)"),
            more => format!("agent {first} and {more} more run it (terminate them first)"),
        })
    }

    /// Removes an installed component, and its name if the name still
    /// points at it.
    fn drop_component(&mut self, digest: &Digest) -> Event {
        let component = self
            .components
            .remove(digest)
            .expect("the caller found the component installed");
        if self.component_names.get(&component.name) == Some(digest) {
            self.component_names.remove(&component.name);
        }
        Event::ComponentRemoved {
            component: *digest,
            name: component.name,
        }
    }
}
