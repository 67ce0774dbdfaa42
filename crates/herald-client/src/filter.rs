//! Builders for [`FilterNode`]s, the filters of subscriptions: tag filters (`tf`, on publication
//! tags) and Herald's payload filters (on a JSON Pointer into the publication's data).
//!
//! ```
//! use herald_client::filter;
//! // Tasks of project 7 that are not archived, by payload fields:
//! let node = filter::and([filter::path_eq("/new/project_id", "7"), filter::not(filter::path_eq("/new/archived", "true"))]);
//! // By tag:
//! let by_tag = filter::tag_in("entity_type", ["task", "comment"]);
//! # let _ = (node, by_tag);
//! ```

pub use herald_core::protocol::FilterNode;

fn leaf(key: &str, path: &str, cmp: &str, val: &str, vals: Vec<String>) -> FilterNode {
    FilterNode { key: key.into(), path: path.into(), cmp: cmp.into(), val: val.into(), vals, ..Default::default() }
}

/// A comparison on a publication tag: `cmp` is one of `eq, neq, in, nin, ex, nex, sw, ew, ct, lt,
/// lte, gt, gte`.
pub fn tag(key: &str, cmp: &str, val: &str) -> FilterNode {
    leaf(key, "", cmp, val, Vec::new())
}

/// A comparison on a field of the publication's data, by JSON Pointer (Herald extension, for
/// `SubscribeOptions::filter`; tag filters cannot use paths).
pub fn path(pointer: &str, cmp: &str, val: &str) -> FilterNode {
    leaf("", pointer, cmp, val, Vec::new())
}

pub fn tag_eq(key: &str, val: &str) -> FilterNode {
    tag(key, "eq", val)
}

pub fn tag_in<I: IntoIterator<Item = S>, S: Into<String>>(key: &str, vals: I) -> FilterNode {
    leaf(key, "", "in", "", vals.into_iter().map(Into::into).collect())
}

pub fn path_eq(pointer: &str, val: &str) -> FilterNode {
    path(pointer, "eq", val)
}

pub fn path_in<I: IntoIterator<Item = S>, S: Into<String>>(pointer: &str, vals: I) -> FilterNode {
    leaf("", pointer, "in", "", vals.into_iter().map(Into::into).collect())
}

fn combine(op: &str, nodes: impl IntoIterator<Item = FilterNode>) -> FilterNode {
    FilterNode { op: op.into(), nodes: nodes.into_iter().collect(), ..Default::default() }
}

/// Matches when every node matches.
pub fn and(nodes: impl IntoIterator<Item = FilterNode>) -> FilterNode {
    combine("and", nodes)
}

/// Matches when any node matches.
pub fn or(nodes: impl IntoIterator<Item = FilterNode>) -> FilterNode {
    combine("or", nodes)
}

/// Matches when the node does not.
pub fn not(node: FilterNode) -> FilterNode {
    combine("not", [node])
}
