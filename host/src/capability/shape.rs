//! What the blocks of a presented token may ask of an evaluation.
//!
//! Anyone holding a token can append blocks to it offline, and every block
//! is evaluated each time the token is checked: for each request of an API
//! client, for each of an agent's operations the gate has not decided
//! before. biscuit evaluates a check by trying every combination of the
//! facts its predicates match (about 0.1 µs each, and as much again for
//! each operation of its expressions: one block of 32 facts and four checks
//! joining three of them took 470 ms an evaluation), and its time limit is
//! looked at between queries, not inside one. So the blocks after
//! the authority block (the host's own) are held to a shape whose cost can
//! be read from the text alone, before anything is evaluated:
//!
//! - no rules and no scopes (which would derive facts, or see other
//!   blocks' facts);
//! - at most [`MAX_BLOCKS`] blocks, [`MAX_BLOCK_FACTS`] facts and
//!   [`MAX_BLOCK_CHECKS`] checks a block, [`MAX_CHECK_QUERIES`]
//!   alternatives a check, [`MAX_QUERY_PREDICATES`] predicates an
//!   alternative;
//! - expressions without closures (`.all`, `.any`) or regular expressions
//!   (`.matches`), whose cost depends on the data;
//! - and, over all blocks, at most [`MAX_COMBINATIONS`] combinations of
//!   facts tried: for each alternative, the product over its predicates of
//!   the facts each can match (those of its block and the authority block
//!   with the same name and arity, and those the host adds when it decides
//!   — [`ambient`]), times one more for each operation of its expressions.
//!
//! The host's own attenuations stay inside: a delegation block of 32
//! rights costs at most 5 × 32 = 160, so a token may be attenuated that
//! way as often as [`MAX_BLOCKS`] allows.

use std::collections::HashMap;

use biscuit_auth::Biscuit;
use biscuit_parser::builder::{Binary, Expression, Op, Predicate};

/// The most blocks a presented token may have.
pub(crate) const MAX_BLOCKS: usize = 16;
/// The most facts an attenuation block may hold.
pub(crate) const MAX_BLOCK_FACTS: usize = 32;
/// The most checks an attenuation block may hold.
const MAX_BLOCK_CHECKS: usize = 4;
/// The most alternatives (`or`) one check may have.
const MAX_CHECK_QUERIES: usize = 4;
/// The most predicates one alternative of a check may join.
const MAX_QUERY_PREDICATES: usize = 3;
/// The most combinations of facts the checks of all attenuation blocks
/// may try in one evaluation, as estimated from their text: under a
/// millisecond of work.
pub(crate) const MAX_COMBINATIONS: u64 = 4096;

/// Facts of `name` the host adds to the ones a token holds when it decides
/// (the operation, its origin, the time, the targets the operation names
/// and its relations to the origin, the components of the origin's
/// lineage), at most.
fn ambient(name: &str) -> u64 {
    match name {
        "operation" | "origin" | "time" => 1,
        "target" => 4,
        "component" => 16,
        _ => 0,
    }
}

/// Checks the blocks after the authority block of `biscuit` against the
/// shape above.
///
/// # Errors
///
/// What is over which bound, and in which block.
pub(crate) fn check(biscuit: &Biscuit) -> Result<(), String> {
    let blocks = biscuit.block_count();
    at_most(blocks, MAX_BLOCKS, |n| format!("{n} blocks"))?;
    let sources = (0..blocks)
        .map(|index| {
            biscuit
                .print_block_source(index)
                .map_err(|e| format!("block {index}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let authority_block = parse(&sources[0], 0)?;
    let authority = facts_by_relation(&authority_block.facts);
    let mut combinations = 0u64;
    for (index, source) in sources.iter().enumerate().skip(1) {
        let block = parse(source, index)?;
        let in_block = |what: String| format!("block {index}: {what}");
        if !block.rules.is_empty() {
            return Err(in_block("attenuation blocks may not hold rules".into()));
        }
        if !block.scopes.is_empty() {
            return Err(in_block("attenuation blocks may not change scopes".into()));
        }
        at_most(block.facts.len(), MAX_BLOCK_FACTS, |n| format!("{n} facts")).map_err(in_block)?;
        at_most(block.checks.len(), MAX_BLOCK_CHECKS, |n| {
            format!("{n} checks")
        })
        .map_err(in_block)?;
        let own = facts_by_relation(&block.facts);
        let matching = |p: &Predicate| {
            let relation = (p.name.as_str(), p.terms.len());
            own.get(&relation).copied().unwrap_or(0)
                + authority.get(&relation).copied().unwrap_or(0)
                + ambient(&p.name)
        };
        for (_, check) in &block.checks {
            at_most(check.queries.len(), MAX_CHECK_QUERIES, |n| {
                format!("a check with {n} alternatives")
            })
            .map_err(in_block)?;
            for query in &check.queries {
                if !query.scopes.is_empty() {
                    return Err(in_block("attenuation checks may not change scopes".into()));
                }
                at_most(query.body.len(), MAX_QUERY_PREDICATES, |n| {
                    format!("a check joining {n} predicates")
                })
                .map_err(in_block)?;
                let mut operations = 0u64;
                for expression in &query.expressions {
                    operations += simple_operations(expression).map_err(|what| {
                        format!(
                            "block {index}: a check uses {what}, which attenuation blocks may not"
                        )
                    })?;
                }
                let tried = query
                    .body
                    .iter()
                    .map(|p| matching(p).max(1))
                    .fold(1u64, u64::saturating_mul);
                combinations = combinations.saturating_add(tried.saturating_mul(1 + operations));
            }
        }
    }
    if combinations > MAX_COMBINATIONS {
        return Err(format!(
            "its checks would try about {combinations} combinations of facts in each evaluation; at most {MAX_COMBINATIONS} are accepted"
        ));
    }
    Ok(())
}

/// Fails naming `what(count)` when `count` is over `max`.
fn at_most(count: usize, max: usize, what: impl FnOnce(usize) -> String) -> Result<(), String> {
    if count > max {
        return Err(format!("{}; at most {max} are accepted", what(count)));
    }
    Ok(())
}

/// Block `index`, parsed back from its `source`.
fn parse(source: &str, index: usize) -> Result<biscuit_parser::parser::SourceResult<'_>, String> {
    biscuit_parser::parser::parse_block_source(source)
        .map_err(|_| format!("block {index} does not read back as Datalog"))
}

/// How many facts each relation (name, arity) has among `facts`.
fn facts_by_relation<'a>(
    facts: &'a [(&str, biscuit_parser::builder::Fact)],
) -> HashMap<(&'a str, usize), u64> {
    let mut by_relation = HashMap::new();
    for (_, fact) in facts {
        let relation = (fact.predicate.name.as_str(), fact.predicate.terms.len());
        *by_relation.entry(relation).or_insert(0) += 1;
    }
    by_relation
}

/// The operations of `expression`, or the one whose cost depends on the
/// data it is given.
fn simple_operations(expression: &Expression) -> Result<u64, &'static str> {
    for op in &expression.ops {
        match op {
            Op::Closure(..) | Op::Binary(Binary::All | Binary::Any) => {
                return Err("a closure (`.all`, `.any`)");
            }
            Op::Binary(Binary::Regex) => return Err("a regular expression (`.matches`)"),
            _ => {}
        }
    }
    Ok(expression.ops.len() as u64)
}

#[cfg(test)]
mod tests {
    use biscuit_auth::{Biscuit, BlockBuilder, KeyPair};

    /// A token whose authority block holds `authority`, with `blocks`
    /// appended as its holder would.
    fn token(authority: &str, blocks: &[String]) -> Biscuit {
        let root = KeyPair::new();
        let mut biscuit = Biscuit::builder()
            .code(authority)
            .unwrap()
            .build(&root)
            .unwrap();
        for code in blocks {
            let block = BlockBuilder::new().code(code.as_str()).unwrap();
            biscuit = biscuit.append(block).unwrap();
        }
        biscuit
    }

    fn appended(blocks: &[String]) -> Biscuit {
        token("right(\"observe\");", blocks)
    }

    fn facts(n: usize) -> String {
        (0..n).map(|i| format!("f({i});\n")).collect()
    }

    #[test]
    fn checks_joining_many_facts_are_refused_by_their_text() {
        // 32 × 32 × 32 combinations, each with an expression of 7
        // operations: 470 ms an evaluation before this bound.
        let heavy = facts(32) + "check if f($a), f($b), f($c), $a + $b + $c < 0 or true;";
        let err = super::check(&appended(&[heavy])).unwrap_err();
        assert!(err.contains("262146 combinations"), "{err}");
        // 32 × 32, and `true` (an operation): 1 026, four such blocks
        // 4 104.
        let pair = facts(32) + "check if f($a), f($b) or true;";
        assert!(super::check(&appended(std::slice::from_ref(&pair))).is_ok());
        let err = super::check(&appended(&vec![pair; 4])).unwrap_err();
        assert!(err.contains("4104 combinations"), "{err}");
        // The authority block's facts count too: 40 rights, joined three
        // times, are 64 000 combinations.
        let rights: String = (0..40)
            .map(|i| format!("right(\"spawn\", \"c{i}\");\n"))
            .collect();
        let join = "check if right(\"spawn\", $a), right(\"spawn\", $b), right(\"spawn\", $c);";
        let err = super::check(&token(&rights, &[join.to_owned()])).unwrap_err();
        assert!(err.contains("64000 combinations"), "{err}");
    }

    #[test]
    fn closures_and_regular_expressions_are_refused() {
        for (code, named) in [
            ("check if [1, 2].all($x -> $x > 0);", "closure"),
            ("check if [1, 2].any($x -> $x > 0);", "closure"),
            ("check if \"aaa\".matches(\"a+\");", "regular expression"),
        ] {
            let err = super::check(&appended(&[code.to_owned()])).unwrap_err();
            assert!(err.contains(named), "{code}: {err}");
        }
        let plain = "check if time($t), $t < 2030-01-01T00:00:00Z;".to_owned();
        assert!(super::check(&appended(&[plain])).is_ok());
    }
}
