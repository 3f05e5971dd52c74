//! The library's module graph has no cycles, and its concerns depend on each
//! other one way only: `text` ← `capability` ← `package` ← `store` ← `log` ← `sandbox`
//! ← `runtime`.
//!
//! The check reads `host/src` itself: every file is a module; every path it
//! names — `use` trees (braces expanded), paths in code, `super::` and
//! `self::` — is resolved to the module that defines the item, following
//! the re-exports (`pub use`, `pub(crate) use`) of the module it names. A
//! module's `mod` declarations are containment, not imports; everything it
//! uses from its children counts, so a child may not use what its parent
//! defines while the parent uses the child.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The concerns, leaves first: a module may import only from its own
/// concern or one listed before it.
const LAYERS: [&str; 7] = [
    "text",
    "capability",
    "package",
    "store",
    "log",
    "sandbox",
    "runtime",
];

/// A module path, e.g. `["runtime", "sequencer", "writer"]` (empty: the crate).
type ModPath = Vec<String>;

struct Module {
    file: PathBuf,
    /// The file's text without comments and string literals.
    code: String,
    /// Names this module re-exports, and the path each comes from.
    reexports: BTreeMap<String, Vec<String>>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its module path.
fn modules(dir: &Path, prefix: &ModPath, out: &mut BTreeMap<ModPath, Module>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut sub = prefix.clone();
            sub.push(name);
            modules(&path, &sub, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let module_path = match name.as_str() {
                "mod" | "lib" => prefix.clone(),
                _ => {
                    let mut p = prefix.clone();
                    p.push(name);
                    p
                }
            };
            let code = strip(&std::fs::read_to_string(&path).unwrap());
            out.insert(
                module_path,
                Module {
                    file: path,
                    reexports: BTreeMap::new(),
                    code,
                },
            );
        }
    }
}

/// Removes comments, string and char literals (so paths in docs and
/// messages do not count), keeping everything else.
fn strip(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if bytes.get(i + 1) == Some(&b'#') || (bytes.get(i + 1) == Some(&b'"')) => {
                // A raw string: r"..." or r#"..."#.
                let mut j = i + 1;
                let mut hashes = 0;
                while bytes.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if bytes.get(j) != Some(&b'"') || (i > 0 && is_ident(bytes[i - 1])) {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= bytes.len() {
                        break;
                    }
                    if bytes[j] == b'"' && bytes[j + 1..].iter().take(hashes).all(|b| *b == b'#') {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') || bytes.get(i + 1) == Some(&b'\\') => {
                // A char literal ('x', '\n'); lifetimes ('a) are left alone.
                i += 1;
                while i < bytes.len() && bytes[i] != b'\'' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The `use` statements of `code`, braces expanded: each a path of names
/// (the last may be `*` or `self`), with whether it is a re-export.
fn uses(code: &str) -> Vec<(bool, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let before = &rest[..at];
        let exported = before.trim_end().ends_with("pub") || before.trim_end().ends_with(')');
        let after = &rest[at + 3..];
        let end = after.find(';').unwrap_or(after.len());
        let tree: String = after[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        expand(&tree, &mut Vec::new(), &mut |path| {
            out.push((exported, path))
        });
        rest = &after[end..];
    }
    out
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(pos) = text[from..].find(word) {
        let at = from + pos;
        let before_ok = at == 0 || !is_ident(bytes[at - 1]);
        let after_ok = bytes.get(at + word.len()).is_none_or(|b| !is_ident(*b));
        if before_ok && after_ok {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Expands a `use` tree like `crate::a::{b::C, d::{E, F}}`.
fn expand(tree: &str, prefix: &mut Vec<String>, emit: &mut dyn FnMut(Vec<String>)) {
    let tree = tree.trim_end_matches(',');
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let added: Vec<String> = split_path(head);
        prefix.extend(added.iter().cloned());
        for part in split_top(inner) {
            expand(part, prefix, emit);
        }
        prefix.truncate(prefix.len() - added.len());
    } else {
        let tree = tree.split(" as ").next().unwrap();
        let tree = tree
            .split("as")
            .next()
            .filter(|_| !tree.contains("::as"))
            .unwrap_or(tree);
        let mut path = prefix.clone();
        path.extend(split_path(tree));
        if !path.is_empty() {
            emit(path);
        }
    }
}

fn split_path(text: &str) -> Vec<String> {
    text.split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Splits on commas that are not inside braces.
fn split_top(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// Paths written in code outside `use` statements: `crate::…`, `super::…`.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(pos) = code[from..].find(start) {
            let at = from + pos;
            from = at + start.len();
            if at > 0 && is_ident(code.as_bytes()[at - 1]) {
                continue;
            }
            let tail: String = code[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(split_path(&tail));
        }
    }
    out
}

/// The absolute path a path written in module `from` means.
fn absolute(from: &ModPath, is_mod_file: bool, path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") => {
            let mut b = from.clone();
            // `super` in `x/mod.rs` is x's parent; in `x/y.rs`, `x`.
            b.pop();
            b
        }
        Some("self") => from.clone(),
        _ => return None,
    };
    let _ = is_mod_file;
    let mut rest = &path[1..];
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The module that defines what `path` names: its longest prefix that is a
/// module, following that module's re-exports.
fn resolve(modules: &BTreeMap<ModPath, Module>, path: &[String], depth: u32) -> Option<ModPath> {
    let mut module: ModPath = Vec::new();
    let mut i = 0;
    while i < path.len() {
        let mut next = module.clone();
        next.push(path[i].clone());
        if modules.contains_key(&next) {
            module = next;
            i += 1;
        } else {
            break;
        }
    }
    if depth < 8
        && let Some(name) = path.get(i)
        && let Some(source) = modules.get(&module).and_then(|m| m.reexports.get(name))
        && let Some(target) = resolve(modules, source, depth + 1)
    {
        return Some(target);
    }
    Some(module)
}

fn graph() -> (
    BTreeMap<ModPath, BTreeSet<ModPath>>,
    BTreeMap<ModPath, PathBuf>,
) {
    let mut modules = BTreeMap::new();
    modules_root(&mut modules);
    // Re-exports first, so imports can be followed through them.
    let keys: Vec<ModPath> = modules.keys().cloned().collect();
    for key in &keys {
        let is_mod = is_mod_file(&modules[key].file);
        let found: Vec<(String, Vec<String>)> = uses(&modules[key].code)
            .into_iter()
            .filter(|(exported, _)| *exported)
            .filter_map(|(_, path)| {
                let name = path.last()?.clone();
                let relative: Vec<String> =
                    if matches!(path[0].as_str(), "crate" | "super" | "self") {
                        path.clone()
                    } else {
                        // `pub use child::X` is relative to this module.
                        std::iter::once("self".to_owned())
                            .chain(path.iter().cloned())
                            .collect()
                    };
                Some((name, absolute(key, is_mod, &relative)?))
            })
            .collect();
        modules.get_mut(key).unwrap().reexports.extend(found);
    }
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    let mut files = BTreeMap::new();
    for key in &keys {
        let module = &modules[key];
        files.insert(key.clone(), module.file.clone());
        let is_mod = is_mod_file(&module.file);
        let mut paths: Vec<Vec<String>> = uses(&module.code)
            .into_iter()
            .map(|(_, p)| {
                if matches!(p[0].as_str(), "crate" | "super" | "self") {
                    p
                } else {
                    std::iter::once("self".to_owned()).chain(p).collect()
                }
            })
            .collect();
        paths.extend(inline_paths(&module.code));
        for path in paths {
            let Some(abs) = absolute(key, is_mod, &path) else {
                continue;
            };
            let Some(target) = resolve(&modules, &abs, 0) else {
                continue;
            };
            if target != *key && !target.is_empty() {
                edges.entry(key.clone()).or_default().insert(target);
            }
        }
    }
    (edges, files)
}

fn modules_root(out: &mut BTreeMap<ModPath, Module>) {
    modules(&src(), &Vec::new(), out);
}

fn is_mod_file(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("mod.rs" | "lib.rs")
    )
}

fn name(path: &ModPath) -> String {
    if path.is_empty() {
        "crate".into()
    } else {
        path.join("::")
    }
}

/// A path of imports from `from` back to `to`, if there is one.
fn path_back(
    edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
    from: &ModPath,
    to: &ModPath,
    seen: &mut BTreeSet<ModPath>,
) -> Option<Vec<String>> {
    for next in edges.get(from).into_iter().flatten() {
        if next == to {
            return Some(vec![name(from), name(to)]);
        }
        if seen.insert(next.clone())
            && let Some(mut path) = path_back(edges, next, to, seen)
        {
            path.insert(0, name(from));
            return Some(path);
        }
    }
    None
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let (edges, _) = graph();
    let cycles: Vec<Vec<String>> = edges
        .keys()
        .filter_map(|module| path_back(&edges, module, module, &mut BTreeSet::new()))
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
    assert!(
        edges.len() > 20,
        "the graph was read: {} modules",
        edges.len()
    );
}

#[test]
fn concerns_depend_one_way() {
    let (edges, files) = graph();
    let layer = |m: &ModPath| {
        m.first()
            .and_then(|top| LAYERS.iter().position(|l| l == top))
    };
    let mut wrong = Vec::new();
    for (from, targets) in &edges {
        let Some(from_layer) = layer(from) else {
            continue; // the crate root and `bench_support` sit above everything
        };
        for to in targets {
            if let Some(to_layer) = layer(to)
                && to_layer > from_layer
            {
                wrong.push(format!(
                    "{} ({}) imports {}",
                    name(from),
                    files[from].display(),
                    name(to)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering {LAYERS:?}: {wrong:#?}"
    );
}
