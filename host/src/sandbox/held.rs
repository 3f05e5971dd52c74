//! What an instance's `wasi:http` resources may hold in the host's
//! memory, and the charge for it.
//!
//! `wasi:http` keeps header maps and requests in the host, outside the
//! instance's linear memory, and any agent may make them: no right is
//! needed to build a request it never sends. Each is bounded here: a
//! header map to [`HEADER_MAP_BYTES`], a request's extension method to
//! [`METHOD_BYTES`], its path and authority to [`URL_PART_BYTES`] each, its
//! unsent body to two writes of [`BODY_CHUNK_BYTES`]; the instance's
//! handles bound how many ([`AgentLimits::handles`]: about 8 MiB an
//! instance). Bounded per instance only, a tree holding hundreds of
//! instances parked gigabytes outside every budget: so what header maps,
//! URLs and unsent bodies hold is charged to the host's memory for agents
//! under the agent's tree (see `memory`), as its linear memories are (a
//! request handed over is charged as an exchange, in `http`).
//!
//! The host sees where they grow (a header appended or set, a map made
//! from a list, a path or authority set, a body taken), not where they go
//! (a handle dropped, a map moved into a request). So [`Held`] keeps an estimate
//! that is never less than what they hold, grown by what each call adds,
//! and room reserved ahead of it; when a call could pass that room, it
//! counts what the instance's table holds (a map shared by several handles
//! once) and reserves again, or refuses the call before it changes
//! anything: the task stops there, as the host's condition (as a linear
//! memory's growth past the tree's share does).
//!
//! [`AgentLimits::handles`]: crate::AgentLimits::handles

use http::{HeaderMap, HeaderName, HeaderValue};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi_http::p2::HeaderResult;
use wasmtime_wasi_http::p2::bindings::http::types::{
    HeaderError, HostFields as _, HostOutgoingRequest as _, Method,
};
use wasmtime_wasi_http::p2::body::HostOutgoingBody;
use wasmtime_wasi_http::p2::types::HostOutgoingRequest;
use wasmtime_wasi_http::{FieldMap, WasiHttpCtxView, WasiHttpView};

use crate::sandbox::memory::{Charge, HostFailure, Reserved};

/// Bytes (in memory, roughly) of the headers one header map the agent
/// makes may hold. A map lives in the host's memory and an instance may
/// hold up to [`AgentLimits::handles`] of them, so this bounds what
/// header maps park there (4 MiB by default; `wasi:http`'s own limit, 128
/// KiB, with wasmtime's 100 000 handles, let one agent park 12 GiB).
/// Proxies typically allow 8 KiB of headers on the wire.
///
/// [`AgentLimits::handles`]: crate::AgentLimits::handles
pub(crate) const HEADER_MAP_BYTES: usize = 16 << 10;

/// Bytes of an extension method (not `GET`, `POST`, ...) a request the
/// agent makes may carry. `wasi:http` keeps a method of any length in the
/// request, which lives in the host's memory: 250 unsent requests with a
/// 60 MB method each would park 15 GB there.
pub(crate) const METHOD_BYTES: usize = 64;

/// Bytes of the path (with the query) and of the authority a request the
/// agent makes may carry (`wasi:http` allows 64 KiB each, kept in the
/// host's memory with the request; servers commonly refuse URLs over 8
/// KiB).
pub(crate) const URL_PART_BYTES: usize = 8 << 10;

/// Bytes one write to a request's body may hand over (see
/// [`Hooks::p2_outgoing_body_chunk_size`](crate::sandbox::http::Hooks)).
pub(crate) const BODY_CHUNK_BYTES: usize = 16 << 10;

/// Bytes a request's unsent body holds at most: `wasi:http` buffers two
/// writes.
const BODY_BUFFER_BYTES: u64 = 2 * BODY_CHUNK_BYTES as u64;

/// Bytes one request the agent makes holds at most before it is handed
/// over: its header map, path, authority and unsent body. A tree's share
/// of the host's memory holds at least one such request beside the
/// agent's memory and one exchange.
pub(crate) const REQUEST_BYTES: u64 =
    HEADER_MAP_BYTES as u64 + 2 * URL_PART_BYTES as u64 + BODY_BUFFER_BYTES;

/// Room reserved beyond what a call needs, so that calls in a row do not
/// each count the table: this, or a quarter of what is held if more.
const SLACK: u64 = 64 << 10;

/// A store's data that holds `wasi:http` resources and charges what they
/// hold.
pub(crate) trait Holds: WasiHttpView {
    /// The instance's resources, and where what they hold is charged.
    fn holds(&mut self) -> (&mut ResourceTable, &mut Held);

    /// The host could not hold what a call would add: the running task
    /// must stop, as the host's condition.
    fn host_failed(&mut self, failure: HostFailure);
}

/// The room an instance's header maps, URLs and unsent bodies take in the
/// host's memory for agents; given back when the instance is dropped. See
/// the module docs.
pub(crate) struct Held {
    reserved: Reserved,
    /// Bytes held at the last count, and what calls added since: never
    /// less than what is held.
    estimate: u64,
}

impl Held {
    /// Nothing held yet, charged to `charge` as it grows.
    pub(crate) fn new(charge: &Charge) -> Self {
        Self {
            reserved: charge.nothing(),
            estimate: 0,
        }
    }

    /// Makes room for a call that adds at most `most` bytes to what the
    /// resources in `table` hold.
    ///
    /// # Errors
    ///
    /// When the host's memory for agents, or the tree's share of it, has
    /// no room; nothing is taken then.
    fn make_room(&mut self, table: &mut ResourceTable, most: u64) -> Result<(), HostFailure> {
        if self.estimate.saturating_add(most) <= self.reserved.bytes() {
            return Ok(());
        }
        self.estimate = held_in(table);
        let need = self.estimate.saturating_add(most);
        let ample = need.saturating_add(SLACK.max(need / 4));
        if need <= self.reserved.bytes() {
            // Resources went since the last count.
            if self.reserved.bytes() / 2 > ample {
                self.reserved.shrink_to(ample);
            }
            return Ok(());
        }
        self.reserved
            .grow_to(ample)
            .or_else(|_| self.reserved.grow_to(need))
            .map_err(|refused| {
                HostFailure::from(refused).context("holding HTTP headers and unsent bodies")
            })
    }

    /// Counts what the resources in `table` hold now and gives back the
    /// room beyond it (at a task's end: an instance kept for the next one
    /// keeps no room its resources do not hold).
    pub(crate) fn settle(&mut self, table: &mut ResourceTable) {
        if self.reserved.bytes() > 0 {
            self.estimate = held_in(table);
            self.reserved.shrink_to(self.estimate);
        }
    }

    /// Counts `bytes` a call added (at most what room was made for).
    fn added(&mut self, bytes: u64) {
        self.estimate = self.estimate.saturating_add(bytes);
    }
}

/// Makes room for a call on `data`'s resources that adds at most `most`
/// bytes.
///
/// # Errors
///
/// A trap for the guest when there is none: the running task stops, as
/// the host's condition, with the figures (the guest is not told them:
/// they show other trees' memory).
fn make_room<T: Holds>(data: &mut T, most: u64) -> wasmtime::Result<()> {
    let (table, held) = data.holds();
    if let Err(failure) = held.make_room(table, most) {
        tracing::warn!(reason = %failure.reason, "an agent's HTTP requests stopped its task");
        data.host_failed(failure);
        return Err(wasmtime::Error::msg(
            "the host cannot hold more HTTP headers or bodies now",
        ));
    }
    Ok(())
}

/// Bytes of a header map as `wasi:http` counts them against its limit:
/// each name once and each value, with the size of each.
fn map_bytes(map: &HeaderMap) -> u64 {
    let names: usize = map
        .keys()
        .map(|name| name.as_str().len() + size_of::<HeaderName>())
        .sum();
    let values: usize = map
        .values()
        .map(|value| value.len() + size_of::<HeaderValue>())
        .sum();
    (names + values) as u64
}

/// Where a map's headers are (handles sharing one map give the same
/// address), and their bytes.
fn map_at(fields: &FieldMap) -> (usize, u64) {
    let map: &HeaderMap = fields;
    (std::ptr::from_ref(map).addr(), map_bytes(map))
}

/// Bytes the header maps (each once), the requests' URLs and their unsent
/// bodies in `table` hold.
fn held_in(table: &mut ResourceTable) -> u64 {
    let mut maps = Vec::new();
    let mut urls = 0;
    for entry in table.iter_mut() {
        if let Some(fields) = entry.downcast_ref::<FieldMap>() {
            maps.push(map_at(fields));
        } else if let Some(request) = entry.downcast_ref::<HostOutgoingRequest>() {
            maps.push(map_at(&request.headers));
            urls += url_bytes(request.path_with_query.as_deref())
                + url_bytes(request.authority.as_deref());
            if request.body.is_some() {
                urls += BODY_BUFFER_BYTES;
            }
        }
    }
    maps.sort_unstable();
    maps.dedup_by_key(|(address, _)| *address);
    urls + maps.iter().map(|(_, bytes)| bytes).sum::<u64>()
}

/// Bytes of a path or authority.
fn url_bytes(part: Option<&str>) -> u64 {
    part.map_or(0, |part| part.len() as u64)
}

/// A header call's answer to the guest, or a trap.
type Answer<V> = wasmtime::Result<(Result<V, HeaderError>,)>;

/// `wasi:http`'s answer to a header call, as the guest gets it.
fn answer<V>(result: HeaderResult<V>) -> Answer<V> {
    match result {
        Ok(value) => Ok((Ok(value),)),
        Err(e) => Ok((Err(e.downcast()?),)),
    }
}

/// Runs `change` on the header map `fields`, with room made first for
/// what it may add (a whole map, when it copies one it shares), and
/// counts what it added.
fn change_map<T: Holds>(
    data: &mut T,
    fields: Resource<FieldMap>,
    change: impl FnOnce(&mut T, Resource<FieldMap>) -> HeaderResult<()>,
) -> Answer<()> {
    let rep = fields.rep();
    let (address, before) = map_at(data.holds().0.get(&fields)?);
    make_room(data, HEADER_MAP_BYTES as u64)?;
    let result = change(data, fields);
    let (table, held) = data.holds();
    if let Ok(fields) = table.get(&Resource::<FieldMap>::new_borrow(rep)) {
        let (now_at, now) = map_at(fields);
        held.added(if now_at == address {
            now.saturating_sub(before)
        } else {
            now
        });
    }
    answer(result)
}

/// Defines again in `linker` (which has `wasi:http` already) the calls
/// that grow what header maps and requests hold: `outgoing-request`'s
/// `set-method`, refusing a method longer than [`METHOD_BYTES`],
/// `set-path-with-query` and `set-authority`, refusing a part longer than
/// [`URL_PART_BYTES`] (as `wasi:http` refuses one that does not parse),
/// and `body`; and `fields`' `from-list`, `append` and `set`. What each
/// adds is charged (see the module docs).
///
/// # Errors
///
/// When the linker has no `wasi:http/types` of this version to shadow.
pub(crate) fn bound<T: Holds + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    type Request = Resource<HostOutgoingRequest>;
    type Fields = Resource<FieldMap>;
    // What a request's setter answers the guest: set, or refused.
    type Refusable = Result<(), ()>;
    type Set = wasmtime::Result<(Refusable,)>;
    type SetPart =
        fn(&mut WasiHttpCtxView<'_>, Request, Option<String>) -> wasmtime::Result<Refusable>;
    type Body = wasmtime::Result<(Result<Resource<HostOutgoingBody>, ()>,)>;
    linker.allow_shadowing(true);
    let defined = (|| {
        let mut types = linker.instance("wasi:http/types@0.2.12")?;
        types.func_wrap(
            "[method]outgoing-request.set-method",
            |mut store: StoreContextMut<'_, T>, (request, method): (Request, Method)| -> Set {
                if matches!(&method, Method::Other(m) if m.len() > METHOD_BYTES) {
                    return Ok((Err(()),));
                }
                Ok((store.data_mut().http().set_method(request, method)?,))
            },
        )?;
        // The path and the authority: the same check before `wasi:http`'s.
        let parts: [(&str, SetPart); 2] = [
            (
                "[method]outgoing-request.set-path-with-query",
                |view, request, part| view.set_path_with_query(request, part),
            ),
            (
                "[method]outgoing-request.set-authority",
                |view, request, part| view.set_authority(request, part),
            ),
        ];
        for (name, set) in parts {
            types.func_wrap(
                name,
                move |mut store: StoreContextMut<'_, T>,
                      (request, part): (Request, Option<String>)|
                      -> Set {
                    let bytes = url_bytes(part.as_deref());
                    if bytes > URL_PART_BYTES as u64 {
                        return Ok((Err(()),));
                    }
                    let data = store.data_mut();
                    make_room(data, bytes)?;
                    let set = set(&mut data.http(), request, part)?;
                    data.holds().1.added(bytes);
                    Ok((set,))
                },
            )?;
        }
        types.func_wrap(
            "[method]outgoing-request.body",
            |mut store: StoreContextMut<'_, T>, (request,): (Request,)| -> Body {
                let data = store.data_mut();
                make_room(data, BODY_BUFFER_BYTES)?;
                let body = data.http().body(request)?;
                if body.is_ok() {
                    data.holds().1.added(BODY_BUFFER_BYTES);
                }
                Ok((body,))
            },
        )?;
        types.func_wrap(
            "[static]fields.from-list",
            |mut store: StoreContextMut<'_, T>,
             (entries,): (Vec<(String, Vec<u8>)>,)|
             -> Answer<Fields> {
                let data = store.data_mut();
                make_room(data, HEADER_MAP_BYTES as u64)?;
                let result = data.http().from_list(entries);
                if let Ok(fields) = &result {
                    let (table, held) = data.holds();
                    held.added(map_at(table.get(fields)?).1);
                }
                answer(result)
            },
        )?;
        types.func_wrap(
            "[method]fields.append",
            |mut store: StoreContextMut<'_, T>,
             (fields, name, value): (Fields, String, Vec<u8>)|
             -> Answer<()> {
                change_map(store.data_mut(), fields, |data, fields| {
                    data.http().append(fields, name, value)
                })
            },
        )?;
        types.func_wrap(
            "[method]fields.set",
            |mut store: StoreContextMut<'_, T>,
             (fields, name, values): (Fields, String, Vec<Vec<u8>>)|
             -> Answer<()> {
                change_map(store.data_mut(), fields, |data, fields| {
                    data.http().set(fields, name, values)
                })
            },
        )?;
        Ok(())
    })();
    linker.allow_shadowing(false);
    defined
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wasmtime::component::ResourceTable;
    use wasmtime_wasi_http::FieldMap;
    use wasmtime_wasi_http::p2::bindings::http::types::Method;
    use wasmtime_wasi_http::p2::types::HostOutgoingRequest;

    use wasmtime_wasi_http::p2::body::{HostOutgoingBody, StreamContext};

    use crate::sandbox::held::{BODY_CHUNK_BYTES, HEADER_MAP_BYTES, Held, held_in, map_at};
    use crate::sandbox::memory::{Charge, MemoryBudget};

    /// A mutable header map with `n` headers of 1 000 bytes.
    fn headers(n: usize) -> FieldMap {
        let mut map = FieldMap::new_mutable(HEADER_MAP_BYTES);
        for i in 0..n {
            map.append(
                wasmtime_wasi_http::default_hooks(),
                format!("x-h-{i}"),
                vec![b'v'; 1000],
            )
            .unwrap();
        }
        map
    }

    #[test]
    fn a_map_several_handles_share_is_counted_once_and_urls_with_it() {
        let mut table = ResourceTable::new();
        let map = headers(10);
        let (_, bytes) = map_at(&map);
        assert!(bytes > 10_000, "{bytes}");
        table.push(map.clone()).unwrap();
        table.push(map.clone()).unwrap();
        assert_eq!(held_in(&mut table), bytes);
        // A request keeps its headers (the same map here), its path and its
        // authority.
        let request = table
            .push(HostOutgoingRequest {
                method: Method::Get,
                scheme: None,
                authority: Some("a".repeat(300)),
                path_with_query: Some("/".repeat(200)),
                headers: map,
                body: None,
            })
            .unwrap();
        assert_eq!(held_in(&mut table), bytes + 500);
        // Another map is counted on its own; what leaves the table is not.
        table.push(headers(3)).unwrap();
        assert_eq!(held_in(&mut table), bytes + 500 + map_at(&headers(3)).1);
        table.delete(request).unwrap();
        assert_eq!(held_in(&mut table), bytes + map_at(&headers(3)).1);
        // A request with a body (not handed over) holds what its body
        // buffers, at most two writes.
        let (_, body) = HostOutgoingBody::new(StreamContext::Request, None, 1, BODY_CHUNK_BYTES);
        table
            .push(HostOutgoingRequest {
                method: Method::Get,
                scheme: None,
                authority: None,
                path_with_query: None,
                headers: FieldMap::new_mutable(HEADER_MAP_BYTES),
                body: Some(body),
            })
            .unwrap();
        assert_eq!(
            held_in(&mut table),
            bytes + map_at(&headers(3)).1 + 2 * BODY_CHUNK_BYTES as u64
        );
    }

    #[test]
    fn room_is_reserved_ahead_refused_past_the_tree_s_share_and_given_back() {
        let budget = MemoryBudget::new(8 << 20, 1 << 20);
        let tree = toka_kernel::EntityId::from_u128(7);
        let charge = Charge {
            budget: Arc::clone(&budget),
            tree,
        };
        let mut held = Held::new(&charge);
        let mut table = ResourceTable::new();

        // Room for one call, and some to spare: the next calls do not count.
        held.make_room(&mut table, 16 << 10).unwrap();
        let first = budget.usage().in_use;
        assert!(first >= 16 << 10, "{first}");
        held.added(2 << 10);
        held.make_room(&mut table, 16 << 10).unwrap();
        assert_eq!(budget.usage().in_use, first);

        // Maps the table holds grow the reservation as calls add them.
        let mut handles = Vec::new();
        for _ in 0..40 {
            held.make_room(&mut table, HEADER_MAP_BYTES as u64).unwrap();
            let map = headers(15);
            held.added(map_at(&map).1);
            handles.push(table.push(map).unwrap());
        }
        let holding = budget.usage().in_use;
        assert!(holding >= held_in(&mut table), "{holding}");

        // Past the tree's share (1 MiB): refused, and nothing taken.
        let failure = loop {
            if let Err(failure) = held.make_room(&mut table, HEADER_MAP_BYTES as u64) {
                break failure;
            }
            let map = headers(15);
            held.added(map_at(&map).1);
            handles.push(table.push(map).unwrap());
            assert!(handles.len() < 100, "never refused");
        };
        assert!(budget.usage().in_use <= 1 << 20);
        assert!(failure.tree_share, "{failure:?}");
        assert!(
            failure.reason.starts_with(
                "holding HTTP headers and unsent bodies: the agent's tree holds its share of the host's memory for agents"
            ),
            "{failure:?}"
        );

        // At a task's end, only what the table holds stays reserved.
        for handle in handles.split_off(5) {
            table.delete(handle).unwrap();
        }
        held.settle(&mut table);
        assert_eq!(budget.usage().in_use, held_in(&mut table));
        assert!(budget.usage().in_use < first, "{:?}", budget.usage());
        for handle in handles {
            table.delete(handle).unwrap();
        }
        // The maps dropped, the next call counts again and gives room back.
        held.make_room(&mut table, HEADER_MAP_BYTES as u64).unwrap();
        assert!(budget.usage().in_use <= first, "{:?}", budget.usage());
        drop(held);
        assert_eq!(budget.usage().in_use, 0);
    }
}
