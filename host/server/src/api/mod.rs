//! The `/v1` API: one module per resource, every handler documented for
//! the OpenAPI document the router collects.

pub(crate) mod agents;
pub(crate) mod archives;
pub(crate) mod components;
pub(crate) mod index;
pub(crate) mod log;
pub(crate) mod packages;
pub(crate) mod secrets;
pub(crate) mod stream;
pub(crate) mod system;
pub(crate) mod tasks;
pub(crate) mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::error::ErrorBody;

/// The document's frame: title, security scheme, tags.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Toka",
        description = "The HTTP API of `toka serve`: components, agents, tasks, state, tokens and the event log of one Toka host. Every endpoint but `/healthz`, this document and the dashboard needs `Authorization: Bearer <operator token>` (see docs/capabilities.md). Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody)),
    tags(
        (name = "components", description = "Installed WebAssembly components"),
        (name = "agents", description = "Agents: spawn, look at, terminate, resume"),
        (name = "tasks", description = "Tasks: schedule, look at, wait for"),
        (name = "tokens", description = "Capability tokens: issue, attenuate, inspect, revoke"),
        (name = "packages", description = "Signed packages and the trust store: trust publishers, review, install, uninstall"),
        (name = "secrets", description = "Secrets the host injects into agents' outbound requests: set, list, remove (values never come back)"),
        (name = "log", description = "The event log: read, follow, verify, snapshot, archive"),
        (name = "system", description = "Health, status and metrics")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("biscuit")
                    .description(Some(
                        "A biscuit token rooted in the data dir's key, with `operator read`, `write` or `admin`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The errors every authenticated endpoint can answer with, besides its
/// own.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "only its OpenAPI description is used")]
pub(crate) enum AuthErrors {
    /// No token, or one that does not verify, has expired or was revoked.
    #[response(status = 401)]
    Unauthenticated(#[to_schema] ErrorBody),
    /// The token lacks the operator level the endpoint needs.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// Too many requests for this token (or from this address).
    #[response(status = 429)]
    RateLimited(#[to_schema] ErrorBody),
}

/// The errors of an endpoint with a JSON body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "only its OpenAPI description is used")]
pub(crate) enum BodyErrors {
    /// The body is not JSON (the parse error is named).
    #[response(status = 400)]
    Malformed(#[to_schema] ErrorBody),
    /// The body is larger than the server accepts.
    #[response(status = 413)]
    TooLarge(#[to_schema] ErrorBody),
    /// The body is not sent as `application/json`.
    #[response(status = 415)]
    MediaType(#[to_schema] ErrorBody),
    /// The body is JSON of the wrong shape, or a value is not acceptable.
    #[response(status = 422)]
    Unprocessable(#[to_schema] ErrorBody),
}

/// The API's routes and the OpenAPI document describing them.
pub(crate) fn routes(app: &Arc<App>) -> (Router<Arc<App>>, utoipa::openapi::OpenApi) {
    let max_component = app.config.max_component;
    let max_body = app.config.max_body;
    let uploads = OpenApiRouter::new()
        .routes(routes!(components::install, components::list))
        .routes(routes!(packages::install, packages::list))
        .routes(routes!(packages::review))
        .layer(DefaultBodyLimit::max(max_component));
    let rest = OpenApiRouter::new()
        .routes(routes!(components::get, components::remove))
        .routes(routes!(agents::spawn, agents::list))
        .routes(routes!(agents::get))
        .routes(routes!(agents::terminate))
        .routes(routes!(agents::forget))
        .routes(routes!(agents::resume))
        .routes(routes!(agents::state))
        .routes(routes!(tasks::schedule))
        .routes(routes!(tasks::list))
        .routes(routes!(tasks::get))
        .routes(routes!(packages::publishers, packages::trust))
        .routes(routes!(packages::distrust))
        .routes(routes!(packages::uninstall))
        .routes(routes!(secrets::list))
        .routes(routes!(secrets::set, secrets::remove))
        .routes(routes!(tokens::issue))
        .routes(routes!(tokens::attenuate))
        .routes(routes!(tokens::inspect))
        .routes(routes!(tokens::revoke))
        .routes(routes!(log::events))
        .routes(routes!(stream::stream))
        .routes(routes!(stream::ticket))
        .routes(routes!(log::records))
        .routes(routes!(log::state))
        .routes(routes!(log::start_verify, log::latest_verify))
        .routes(routes!(log::get_verify))
        .routes(routes!(log::start_archive, log::latest_archive))
        .routes(routes!(log::get_archive))
        .routes(routes!(archives::list))
        .routes(routes!(archives::download, archives::delete))
        .routes(routes!(log::snapshot))
        .routes(routes!(system::status))
        .routes(routes!(system::metrics))
        .routes(routes!(system::healthz))
        .layer(DefaultBodyLimit::max(max_body));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(uploads)
        .merge(rest)
        .split_for_parts()
}

/// Cursor paging: at most `limit` (default 100, at most 1000) items after
/// `cursor`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paging {
    pub(crate) limit: usize,
}

/// The default page size.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// The largest page size.
pub(crate) const MAX_LIMIT: usize = 1000;
/// Entries a filtered list looks at per request, at most: a filter that
/// matches few entries must not have each request walk them all.
pub(crate) const MAX_SCAN: usize = 10_000;

impl Paging {
    pub(crate) fn new(limit: Option<usize>) -> Result<Self, crate::error::ApiError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(crate::error::ApiError::bad_request(
                "invalid_query",
                format!("limit must be between 1 and {MAX_LIMIT}, not {limit}"),
            ));
        }
        Ok(Self { limit })
    }

    /// Takes a page from `items` (already after the cursor, in order),
    /// with the cursor of the next one.
    pub(crate) fn page<T>(
        &self,
        items: impl Iterator<Item = T>,
        cursor_of: impl Fn(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        self.page_within(items, usize::MAX, |_| 0, cursor_of)
    }

    /// As [`Paging::page`], but the page also ends after the item that
    /// brings the items' sizes (`size_of`) to `max_bytes`.
    pub(crate) fn page_within<T>(
        &self,
        items: impl Iterator<Item = T>,
        max_bytes: usize,
        size_of: impl Fn(&T) -> usize,
        cursor_of: impl Fn(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        let mut items = items.peekable();
        let (mut page, mut bytes) = (Vec::new(), 0usize);
        while page.len() < self.limit && bytes < max_bytes {
            let Some(item) = items.next() else { break };
            bytes = bytes.saturating_add(size_of(&item));
            page.push(item);
        }
        let next = items.peek().and(page.last()).map(&cursor_of);
        (page, next)
    }

    /// Takes a page from a filtered walk: `entries` (already after the
    /// cursor, in order) are keys with the item they give, if they match.
    /// At most [`MAX_SCAN`] entries are looked at, so a page may hold fewer
    /// items than asked for, even none, with the cursor to go on from.
    pub(crate) fn page_walk<K: Copy, T>(
        &self,
        entries: impl Iterator<Item = (K, Option<T>)>,
        cursor_of: impl Fn(K) -> String,
    ) -> (Vec<T>, Option<String>) {
        self.page_walk_within(MAX_SCAN, usize::MAX, |_| 0, entries, cursor_of)
    }

    /// As [`Paging::page_walk`], but the page also ends after the item
    /// that brings the items' sizes (`size_of`) to `max_bytes` (its cursor
    /// is then that item's, even if no entry follows it).
    pub(crate) fn page_walk_bytes<K: Copy, T>(
        &self,
        max_bytes: usize,
        size_of: impl Fn(&T) -> usize,
        entries: impl Iterator<Item = (K, Option<T>)>,
        cursor_of: impl Fn(K) -> String,
    ) -> (Vec<T>, Option<String>) {
        self.page_walk_within(MAX_SCAN, max_bytes, size_of, entries, cursor_of)
    }

    fn page_walk_within<K: Copy, T>(
        &self,
        scan: usize,
        max_bytes: usize,
        size_of: impl Fn(&T) -> usize,
        entries: impl Iterator<Item = (K, Option<T>)>,
        cursor_of: impl Fn(K) -> String,
    ) -> (Vec<T>, Option<String>) {
        let (mut page, mut bytes) = (Vec::new(), 0usize);
        let mut last = None;
        for (looked, (key, item)) in entries.enumerate() {
            if let Some(item) = item {
                if page.len() == self.limit {
                    return (page, last.map(&cursor_of));
                }
                bytes = bytes.saturating_add(size_of(&item));
                page.push(item);
                if bytes >= max_bytes {
                    return (page, Some(cursor_of(key)));
                }
            }
            last = Some(key);
            if looked + 1 == scan {
                return (page, Some(cursor_of(key)));
            }
        }
        (page, None)
    }
}

/// The bytes `text` takes as a JSON string's contents: quotes, backslashes
/// and control characters are escaped (`\n`, `\u0001`: up to six bytes for
/// one).
pub(crate) fn json_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::Paging;

    /// Pages through keys 0..n where `matches` holds, `scan` entries at a
    /// time: the items of each page.
    fn walk(n: u32, limit: usize, scan: usize, matches: &[u32]) -> Vec<Vec<u32>> {
        let paging = Paging { limit };
        let (mut pages, mut after) = (Vec::new(), None::<u32>);
        loop {
            let entries = (0..n)
                .filter(|k| after.is_none_or(|a| *k > a))
                .map(|k| (k, matches.contains(&k).then_some(k)));
            let (page, next) =
                paging.page_walk_within(scan, usize::MAX, |_| 0, entries, |k| k.to_string());
            pages.push(page);
            match next {
                Some(cursor) => after = Some(cursor.parse().unwrap()),
                None => return pages,
            }
        }
    }

    #[test]
    fn a_page_ends_at_its_bytes_and_the_next_goes_on_after_it() {
        let paging = Paging { limit: 100 };
        let sizes = [400usize, 400, 400, 400, 10];
        let page = |after: usize| {
            let items = sizes.iter().enumerate().skip(after);
            paging.page_within(items, 1000, |(_, size)| **size, |(i, _)| i.to_string())
        };
        // Three items pass 1 000 bytes: the third is the last.
        let (items, next) = page(0);
        assert_eq!(items.len(), 3);
        assert_eq!(next.as_deref(), Some("2"));
        let (items, next) = page(3);
        assert_eq!(items.len(), 2);
        assert_eq!(next, None, "nothing is left");
        // Without a bound in bytes, a page is `limit` items.
        let (items, next) = Paging { limit: 2 }.page(0..5, |i| i.to_string());
        assert_eq!((items, next.as_deref()), (vec![0, 1], Some("1")));
        let (items, next) = Paging { limit: 5 }.page(0..5, |i| i.to_string());
        assert_eq!((items.len(), next), (5, None));
    }

    #[test]
    fn a_walked_page_ends_at_its_bytes() {
        let paging = Paging { limit: 100 };
        // Keys 0..6, the even ones match, each of 400 bytes.
        let page = |after: Option<u32>| {
            let entries = (0..6u32)
                .filter(|k| after.is_none_or(|a| *k > a))
                .map(|k| (k, (k % 2 == 0).then_some(400usize)));
            paging.page_walk_bytes(1000, |size| *size, entries, |k| k.to_string())
        };
        // 0, 2 and 4 pass 1 000 bytes at 4: the page ends there.
        assert_eq!(page(None), (vec![400, 400, 400], Some("4".to_owned())));
        assert_eq!(page(Some(4)), (vec![], None));
        assert_eq!(page(Some(1)), (vec![400, 400], None));
    }

    #[test]
    fn json_len_counts_what_escaping_adds() {
        assert_eq!(super::json_len("plain text é"), "plain text é".len());
        assert_eq!(super::json_len("a\"b\\c\n"), 3 + 2 + 2 + 2);
        assert_eq!(super::json_len("\u{1}\u{1f}\u{7f}"), 6 + 6 + 1);
        for text in ["a\"b\\c\n\t\r\u{8}\u{c}", "\u{0}\u{1}x\u{1f}\u{7f}é"] {
            let json = serde_json::to_string(text).unwrap();
            assert_eq!(super::json_len(text), json.len() - 2, "{json}");
        }
    }

    #[test]
    fn a_filter_matching_few_walks_a_bounded_stretch_per_page() {
        let pages = walk(25, 5, 10, &[3, 20]);
        assert_eq!(pages, vec![vec![3], vec![], vec![20]]);
    }

    #[test]
    fn a_full_page_ends_at_its_last_item_and_the_next_starts_after_it() {
        let every: Vec<u32> = (0..7).collect();
        let pages = walk(7, 3, 10, &every);
        assert_eq!(pages, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
    }
}
