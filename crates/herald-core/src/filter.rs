//! Subscription filters: Centrifugo's tag filter (`tf`, a [`FilterNode`] tree over publication
//! tags) and Herald's extension that compares fields of the publication's data, addressed by
//! JSON Pointer (`path` instead of `key` in a leaf).
//!
//! Filters are validated and compiled once, at subscribe time, into a [`Filter`] that is cheap to
//! evaluate and has a canonical key, so that subscribers with identical filters share one
//! evaluation per publication.

use crate::protocol::FilterNode;
use serde_json::Value;
use std::collections::BTreeMap;

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter at {at}: {reason}")]
pub struct FilterError {
    /// Where in the filter tree, like `nodes[1].cmp`.
    pub at: String,
    pub reason: String,
}

fn error(at: &str, reason: impl Into<String>) -> FilterError {
    FilterError { at: if at.is_empty() { "(root)".into() } else { at.to_owned() }, reason: reason.into() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    Eq,
    Neq,
    In,
    Nin,
    Exists,
    NotExists,
    StartsWith,
    EndsWith,
    Contains,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Compare {
    fn parse(cmp: &str) -> Option<Self> {
        Some(match cmp {
            "eq" => Self::Eq,
            "neq" => Self::Neq,
            "in" => Self::In,
            "nin" => Self::Nin,
            "ex" => Self::Exists,
            "nex" => Self::NotExists,
            "sw" => Self::StartsWith,
            "ew" => Self::EndsWith,
            "ct" => Self::Contains,
            "lt" => Self::Lt,
            "lte" => Self::Lte,
            "gt" => Self::Gt,
            "gte" => Self::Gte,
            _ => return None,
        })
    }

    fn numeric(self) -> bool {
        matches!(self, Self::Lt | Self::Lte | Self::Gt | Self::Gte)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Subject {
    Tag(String),
    /// A JSON Pointer into the publication data.
    Field(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Leaf { subject: Subject, compare: Compare, value: String, values: Vec<String>, number: Option<f64> },
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

/// A compiled filter; `matches` never fails.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
    key: String,
}

/// What a filter looks at: the publication's tags and its data.
pub struct Target<'a> {
    pub tags: &'a BTreeMap<String, String>,
    pub data: Option<&'a Value>,
}

impl Filter {
    /// Validates and compiles a filter tree.
    pub fn compile(node: &FilterNode) -> Result<Self, FilterError> {
        let root = compile_node(node, "")?;
        let key = serde_json::to_string(node).unwrap_or_default();
        Ok(Self { root, key })
    }

    /// Several filters of which any may match (Herald's list of filters).
    pub fn any_of(nodes: &[FilterNode]) -> Result<Self, FilterError> {
        match nodes {
            [single] => Self::compile(single),
            _ => {
                let or = FilterNode { op: "or".into(), nodes: nodes.to_vec(), ..Default::default() };
                Self::compile(or_checked(&or, nodes.is_empty())?)
            }
        }
    }

    /// Both filters must match.
    pub fn and(self, other: Filter) -> Self {
        let key = format!("and({},{})", self.key, other.key);
        Self { root: Node::And(vec![self.root, other.root]), key }
    }

    /// A canonical text: equal keys mean equal filters.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the filter reads publication data (then the data must be parsed to evaluate it).
    pub fn needs_data(&self) -> bool {
        fn walk(node: &Node) -> bool {
            match node {
                Node::Leaf { subject, .. } => matches!(subject, Subject::Field(_)),
                Node::And(nodes) | Node::Or(nodes) => nodes.iter().any(walk),
                Node::Not(node) => walk(node),
            }
        }
        walk(&self.root)
    }

    pub fn matches(&self, target: &Target<'_>) -> bool {
        eval(&self.root, target)
    }
}

fn or_checked(node: &FilterNode, empty: bool) -> Result<&FilterNode, FilterError> {
    if empty {
        return Err(error("", "an empty list of filters matches nothing; omit it instead"));
    }
    Ok(node)
}

fn compile_node(node: &FilterNode, at: &str) -> Result<Node, FilterError> {
    let child = |i: usize| if at.is_empty() { format!("nodes[{i}]") } else { format!("{at}.nodes[{i}]") };
    let children = |nodes: &[FilterNode]| -> Result<Vec<Node>, FilterError> {
        nodes.iter().enumerate().map(|(i, n)| compile_node(n, &child(i))).collect()
    };
    match node.op.as_str() {
        "" => compile_leaf(node, at),
        "and" | "or" => {
            if node.nodes.is_empty() {
                return Err(error(at, format!("`{}` needs at least one node", node.op)));
            }
            let nodes = children(&node.nodes)?;
            Ok(if node.op == "and" { Node::And(nodes) } else { Node::Or(nodes) })
        }
        "not" => match node.nodes.as_slice() {
            [single] => Ok(Node::Not(Box::new(compile_node(single, &child(0))?))),
            _ => Err(error(at, "`not` needs exactly one node")),
        },
        other => Err(error(at, format!("unknown op {other:?} (use and, or, not, or none for a comparison)"))),
    }
}

fn compile_leaf(node: &FilterNode, at: &str) -> Result<Node, FilterError> {
    let subject = match (node.key.is_empty(), node.path.is_empty()) {
        (false, true) => Subject::Tag(node.key.clone()),
        (true, false) => {
            if !node.path.starts_with('/') {
                return Err(error(at, format!("path {:?} is not a JSON Pointer (it must start with '/')", node.path)));
            }
            if node.path.contains('~') && !valid_pointer_escapes(&node.path) {
                return Err(error(at, format!("path {:?} has an invalid '~' escape (use ~0 or ~1)", node.path)));
            }
            Subject::Field(node.path.clone())
        }
        (true, true) => return Err(error(at, "a comparison needs `key` (a tag) or `path` (a JSON Pointer into data)")),
        (false, false) => return Err(error(at, "a comparison takes `key` or `path`, not both")),
    };
    if !node.nodes.is_empty() {
        return Err(error(at, "a comparison has no `nodes`"));
    }
    let compare = Compare::parse(&node.cmp).ok_or_else(|| {
        error(at, format!("unknown cmp {:?} (eq, neq, in, nin, ex, nex, sw, ew, ct, lt, lte, gt, gte)", node.cmp))
    })?;
    let number = if compare.numeric() {
        let parsed = node
            .val
            .trim()
            .parse::<f64>()
            .map_err(|_| error(at, format!("`{}` compares numbers; val {:?} is not one", node.cmp, node.val)))?;
        Some(parsed)
    } else {
        None
    };
    if matches!(compare, Compare::In | Compare::Nin) && node.vals.is_empty() {
        return Err(error(at, format!("`{}` needs `vals`", node.cmp)));
    }
    Ok(Node::Leaf { subject, compare, value: node.val.clone(), values: node.vals.clone(), number })
}

fn valid_pointer_escapes(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().all(|(i, b)| *b != b'~' || matches!(bytes.get(i + 1), Some(b'0') | Some(b'1')))
}

/// The compared value of a field, as text; numbers and booleans by their JSON text, strings bare.
/// Objects, arrays and null count as present but match no text comparison.
fn field_text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(std::borrow::Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

fn eval(node: &Node, target: &Target<'_>) -> bool {
    match node {
        Node::And(nodes) => nodes.iter().all(|n| eval(n, target)),
        Node::Or(nodes) => nodes.iter().any(|n| eval(n, target)),
        Node::Not(inner) => !eval(inner, target),
        Node::Leaf { subject, compare, value, values, number } => {
            let (present, text, numeric) = match subject {
                Subject::Tag(key) => {
                    let tag = target.tags.get(key);
                    (
                        tag.is_some(),
                        tag.map(|t| std::borrow::Cow::Borrowed(t.as_str())),
                        tag.and_then(|t| t.trim().parse::<f64>().ok()),
                    )
                }
                Subject::Field(path) => {
                    let field = target.data.and_then(|d| d.pointer(path));
                    let numeric = field.and_then(|f| match f {
                        Value::Number(n) => n.as_f64(),
                        Value::String(s) => s.trim().parse::<f64>().ok(),
                        _ => None,
                    });
                    (field.is_some(), field.and_then(field_text), numeric)
                }
            };
            match compare {
                Compare::Exists => present,
                Compare::NotExists => !present,
                Compare::Lt | Compare::Lte | Compare::Gt | Compare::Gte => match (numeric, number) {
                    (Some(left), Some(right)) => match compare {
                        Compare::Lt => left < *right,
                        Compare::Lte => left <= *right,
                        Compare::Gt => left > *right,
                        _ => left >= *right,
                    },
                    _ => false,
                },
                // A missing value is "not equal" and "not in", as in Centrifugo.
                Compare::Neq => text.is_none_or(|t| t != value.as_str()),
                Compare::Nin => text.is_none_or(|t| !values.iter().any(|v| v == t.as_ref())),
                Compare::Eq => text.is_some_and(|t| t == value.as_str()),
                Compare::In => text.is_some_and(|t| values.iter().any(|v| v == t.as_ref())),
                Compare::StartsWith => text.is_some_and(|t| t.starts_with(value.as_str())),
                Compare::EndsWith => text.is_some_and(|t| t.ends_with(value.as_str())),
                Compare::Contains => text.is_some_and(|t| t.contains(value.as_str())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn leaf(key: &str, cmp: &str, val: &str) -> FilterNode {
        FilterNode { key: key.into(), cmp: cmp.into(), val: val.into(), ..Default::default() }
    }

    fn field(path: &str, cmp: &str, val: &str) -> FilterNode {
        FilterNode { path: path.into(), cmp: cmp.into(), val: val.into(), ..Default::default() }
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn check(node: FilterNode, tags: &BTreeMap<String, String>, data: Option<&Value>) -> bool {
        Filter::compile(&node).unwrap().matches(&Target { tags, data })
    }

    #[test]
    fn every_tag_operator() {
        let t = tags(&[("project", "p1"), ("priority", "7"), ("name", "alpha-beta")]);
        assert!(check(leaf("project", "eq", "p1"), &t, None));
        assert!(!check(leaf("project", "eq", "p2"), &t, None));
        assert!(check(leaf("project", "neq", "p2"), &t, None));
        assert!(check(leaf("missing", "neq", "x"), &t, None));
        let mut in_node = leaf("project", "in", "");
        in_node.vals = vec!["p0".into(), "p1".into()];
        assert!(check(in_node.clone(), &t, None));
        in_node.cmp = "nin".into();
        assert!(!check(in_node, &t, None));
        assert!(check(leaf("project", "ex", ""), &t, None));
        assert!(check(leaf("missing", "nex", ""), &t, None));
        assert!(check(leaf("name", "sw", "alpha"), &t, None));
        assert!(check(leaf("name", "ew", "beta"), &t, None));
        assert!(check(leaf("name", "ct", "a-b"), &t, None));
        assert!(check(leaf("priority", "lt", "8"), &t, None));
        assert!(check(leaf("priority", "lte", "7"), &t, None));
        assert!(check(leaf("priority", "gt", "6.5"), &t, None));
        assert!(check(leaf("priority", "gte", "7"), &t, None));
        assert!(!check(leaf("name", "gt", "1"), &t, None), "non-numbers never compare");
    }

    #[test]
    fn payload_fields_by_pointer() {
        let data = json!({"entity": {"type": "task", "size": 12}, "done": true, "a/b": "slash"});
        let t = tags(&[]);
        assert!(check(field("/entity/type", "eq", "task"), &t, Some(&data)));
        assert!(check(field("/entity/size", "gte", "12"), &t, Some(&data)));
        assert!(check(field("/done", "eq", "true"), &t, Some(&data)));
        assert!(check(field("/a~1b", "eq", "slash"), &t, Some(&data)));
        assert!(check(field("/entity", "ex", ""), &t, Some(&data)));
        assert!(!check(field("/entity", "eq", "x"), &t, Some(&data)));
        assert!(check(field("/nope", "nex", ""), &t, Some(&data)));
    }

    #[test]
    fn combinations_and_lists() {
        let t = tags(&[("type", "task"), ("area", "billing")]);
        let and = FilterNode {
            op: "and".into(),
            nodes: vec![leaf("type", "eq", "task"), leaf("area", "eq", "billing")],
            ..Default::default()
        };
        assert!(check(and, &t, None));
        let not = FilterNode { op: "not".into(), nodes: vec![leaf("type", "eq", "task")], ..Default::default() };
        assert!(!check(not, &t, None));
        let any = Filter::any_of(&[leaf("type", "eq", "doc"), leaf("area", "eq", "billing")]).unwrap();
        assert!(any.matches(&Target { tags: &t, data: None }));
        let none = Filter::any_of(&[leaf("type", "eq", "doc"), leaf("area", "eq", "hr")]).unwrap();
        assert!(!none.matches(&Target { tags: &t, data: None }));
    }

    #[test]
    fn invalid_filters_say_where_and_why() {
        let bad = |node: FilterNode| Filter::compile(&node).unwrap_err().to_string();
        assert!(bad(leaf("k", "like", "x")).contains("unknown cmp"));
        assert!(bad(leaf("k", "gt", "abc")).contains("compares numbers"));
        assert!(bad(leaf("k", "in", "")).contains("needs `vals`"));
        assert!(bad(field("no-slash", "eq", "x")).contains("JSON Pointer"));
        assert!(bad(field("/bad~2", "eq", "x")).contains("escape"));
        assert!(bad(leaf("", "eq", "x")).contains("needs `key`"));
        assert!(bad(FilterNode { op: "xor".into(), ..Default::default() }).contains("unknown op"));
        let nested = FilterNode {
            op: "and".into(),
            nodes: vec![leaf("a", "eq", "1"), leaf("b", "zz", "1")],
            ..Default::default()
        };
        assert!(bad(nested).contains("nodes[1]"));
        assert!(Filter::any_of(&[]).is_err());
    }

    #[test]
    fn identical_filters_share_a_key() {
        let a = Filter::compile(&leaf("k", "eq", "v")).unwrap();
        let b = Filter::compile(&leaf("k", "eq", "v")).unwrap();
        let c = Filter::compile(&leaf("k", "eq", "w")).unwrap();
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
    }
}
