//! An index of the agents for the filtered agent list, one per committed
//! state.
//!
//! A list filtered by `parent`, `component` or `status` otherwise walks
//! the agents in id order, looking at [`MAX_SCAN`] of them per request: at
//! 100 000 agents, a client after one agent's few children follows ten
//! cursors, and each request walks 10 000 agents. Once there are more
//! agents than that, the list uses this index instead: the ids of the
//! agents by parent, by component and by status, each in id order, built
//! from the committed state in one walk. It is built once per state (as
//! the census is) and one at a time, so a `read` client asking as fast as
//! its rate allows has the server build at most one per committed state
//! (and states are copied for readers at most 5 % of the time).

use std::collections::HashMap;
use std::sync::Arc;

use toka_kernel::{AgentId, AgentStatus, Digest, EntityId, WorldState};

use crate::api::MAX_SCAN;
use crate::app::App;

/// `active`, `quarantined` or `terminated`.
pub(crate) fn status_name(status: &AgentStatus) -> &'static str {
    match status {
        AgentStatus::Active => "active",
        AgentStatus::Quarantined { .. } => "quarantined",
        AgentStatus::Terminated { .. } => "terminated",
    }
}

/// The agents of one state by parent, component and status, each list in
/// id order.
#[derive(Debug, Default)]
pub(crate) struct AgentIndex {
    by_parent: HashMap<EntityId, Vec<AgentId>>,
    by_component: HashMap<Digest, Vec<AgentId>>,
    by_status: HashMap<&'static str, Vec<AgentId>>,
}

/// What an agent list is filtered by.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AgentFilter<'a> {
    pub(crate) parent: Option<EntityId>,
    /// `Some(None)`: a component name no component has (nothing matches).
    pub(crate) component: Option<Option<Digest>>,
    pub(crate) status: Option<&'a str>,
}

impl AgentFilter<'_> {
    /// Whether any filter is set.
    pub(crate) fn is_set(&self) -> bool {
        self.parent.is_some() || self.component.is_some() || self.status.is_some()
    }

    /// Whether agent `a` passes every filter set.
    pub(crate) fn matches(&self, a: &toka_kernel::AgentRecord) -> bool {
        self.status.is_none_or(|st| status_name(&a.status) == st)
            && self.parent.is_none_or(|p| a.parent == p)
            && self.component.is_none_or(|c| c == Some(a.component))
    }
}

impl AgentIndex {
    /// Indexes every agent of `state`.
    pub(crate) fn of(state: &WorldState) -> Self {
        let mut index = Self::default();
        // The agents come in id order, so each list is in id order.
        for (id, a) in state.agents() {
            index.by_parent.entry(a.parent).or_default().push(id);
            index.by_component.entry(a.component).or_default().push(id);
            index
                .by_status
                .entry(status_name(&a.status))
                .or_default()
                .push(id);
        }
        index
    }

    /// The agents that may match `filter`: the shortest of the lists its
    /// filters select (every agent of it passes that filter; the others
    /// are still to be checked), or `None` when no filter is set.
    pub(crate) fn candidates(&self, filter: &AgentFilter<'_>) -> Option<&[AgentId]> {
        fn list(ids: Option<&Vec<AgentId>>) -> &[AgentId] {
            ids.map_or(&[], Vec::as_slice)
        }
        [
            filter.parent.map(|p| list(self.by_parent.get(&p))),
            filter.component.map(|c| match c {
                Some(digest) => list(self.by_component.get(&digest)),
                None => &[],
            }),
            filter.status.map(|st| list(self.by_status.get(st))),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|ids| ids.len())
    }
}

/// The index of `state` (the committed state after record `head`), when
/// the list is filtered and the state has more agents than a request
/// looks at; built once per state.
pub(crate) async fn agent_index(
    app: &App,
    head: u64,
    state: &Arc<WorldState>,
    filter: &AgentFilter<'_>,
) -> Option<Arc<AgentIndex>> {
    if !filter.is_set() || state.agents().len() <= MAX_SCAN {
        return None;
    }
    let state = Arc::clone(state);
    let index = app
        .agent_index
        .get(head, &app.log_readers, move || {
            Arc::new(AgentIndex::of(&state))
        })
        .await;
    Some(index)
}

#[cfg(test)]
mod tests {
    use toka_kernel::{
        AgentSpec, Command, ComponentSpec, Digest, EntityId, Event, Kernel, Limits, Operation,
        Timestamp,
    };

    use crate::api::Paging;
    use crate::api::index::{AgentFilter, AgentIndex};

    /// A state with `n` agents of two components, every third a child of
    /// the first agent, every seventh terminated.
    fn state(n: u64) -> Kernel {
        let mut kernel = Kernel::new(Limits::default());
        let mut apply = |origin: EntityId, op| {
            kernel
                .apply(Command::system(origin, Timestamp(1), op))
                .unwrap()
                .events
        };
        let component = |name: &str| Digest::of(name.as_bytes());
        for name in ["a", "b"] {
            apply(
                EntityId::SYSTEM,
                Operation::InstallComponent {
                    component: Box::new(ComponentSpec {
                        digest: component(name),
                        name: name.into(),
                        size: 1,
                    }),
                },
            );
        }
        let mut first = None;
        for i in 0..n {
            let spec = AgentSpec {
                component: component(if i % 2 == 0 { "a" } else { "b" }),
                name: format!("agent-{i}"),
                token: Digest::of(&i.to_le_bytes()),
                rights: Vec::new(),
            };
            let parent = first.filter(|_| i % 3 == 0).unwrap_or(EntityId::SYSTEM);
            let events = apply(
                parent,
                Operation::SpawnAgent {
                    spec: Box::new(spec),
                },
            );
            let Event::AgentSpawned { agent, .. } = events[0] else {
                panic!("not spawned: {events:?}");
            };
            first.get_or_insert(agent);
            if i % 7 == 6 {
                apply(
                    EntityId::SYSTEM,
                    Operation::TerminateAgent {
                        agent,
                        reason: "test".into(),
                    },
                );
            }
        }
        kernel
    }

    /// Every page of the list filtered by `filter`, through the index's
    /// candidates or walking every agent, looking at 10 agents per page.
    fn pages(
        kernel: &Kernel,
        filter: &AgentFilter<'_>,
        index: Option<&AgentIndex>,
    ) -> Vec<Vec<EntityId>> {
        let s = kernel.state();
        let paging = Paging { limit: 5 };
        let mut after = None;
        let mut pages = Vec::new();
        loop {
            let entry = |(id, a): (EntityId, &toka_kernel::AgentRecord)| {
                (id, filter.matches(a).then_some(id))
            };
            let (page, next) = match index.and_then(|i| i.candidates(filter)) {
                Some(ids) => {
                    let start = after.map_or(0, |a| ids.partition_point(|id| *id <= a));
                    let agents = ids[start..].iter().map(|id| (*id, s.agent(*id).unwrap()));
                    paging.page_walk_within(
                        10,
                        usize::MAX,
                        |_| 0,
                        agents.map(entry),
                        |id| id.to_string(),
                    )
                }
                None => paging.page_walk_within(
                    10,
                    usize::MAX,
                    |_| 0,
                    s.agents_after(after).map(entry),
                    |id| id.to_string(),
                ),
            };
            pages.push(page);
            match next {
                Some(cursor) => after = Some(cursor.parse().unwrap()),
                None => return pages,
            }
        }
    }

    #[test]
    fn the_index_gives_the_agents_a_walk_of_every_agent_gives() {
        let kernel = state(200);
        let index = AgentIndex::of(kernel.state());
        let first = kernel
            .state()
            .agents()
            .find(|(_, a)| a.name == "agent-0")
            .unwrap()
            .0;
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let filters = [
            AgentFilter {
                parent: Some(first),
                ..AgentFilter::default()
            },
            AgentFilter {
                parent: Some(EntityId::SYSTEM),
                status: Some("terminated"),
                ..AgentFilter::default()
            },
            AgentFilter {
                component: Some(Some(a)),
                ..AgentFilter::default()
            },
            AgentFilter {
                component: Some(Some(b)),
                status: Some("active"),
                parent: Some(first),
            },
            AgentFilter {
                component: Some(None),
                ..AgentFilter::default()
            },
            AgentFilter {
                status: Some("quarantined"),
                ..AgentFilter::default()
            },
        ];
        let short =
            |pages: &[Vec<EntityId>]| pages.iter().rev().skip(1).filter(|p| p.len() < 5).count();
        for filter in &filters {
            let walked = pages(&kernel, filter, None);
            let indexed = pages(&kernel, filter, Some(&index));
            assert_eq!(indexed.concat(), walked.concat(), "{filter:?}");
        }
        // One filter: the index gives only matches, so every page but the
        // last is full; the walk looks at 10 agents for 3 or 4 children.
        let walked = pages(&kernel, &filters[0], None);
        let indexed = pages(&kernel, &filters[0], Some(&index));
        assert_eq!(indexed.concat().len(), 66, "every third of agents 1..199");
        assert_eq!(short(&indexed), 0, "{indexed:?}");
        assert!(short(&walked) > 10, "{walked:?}");
    }
}
