//! Finding the dotted key (`sidecar.max_read_bytes`) that a TOML error's
//! byte span points at. serde's errors name only the last segment of a key
//! (`unknown field `max_reed_bytes``), so the file is read a second time as
//! a tree of spanned keys and the span is looked up in it.

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;

/// The key whose text `span` covers (an unknown key), else, for a table
/// header `[a.b]`, its last key, else the nearest key before `span` (the
/// key of a bad value). None if `text` is not TOML this can read (a
/// datetime value, for one).
pub(crate) fn key_at(text: &str, span: Range<usize>) -> Option<String> {
    let root: Node = toml::from_str(text).ok()?;
    let mut keys = Vec::new();
    collect(&root, &mut Vec::new(), &mut keys);
    keys.sort_by_key(|(range, _)| range.start);
    if let Some((_, key)) = keys.iter().find(|(range, _)| *range == span) {
        return Some(key.clone());
    }
    let covered = text.get(span.clone())?;
    if covered.starts_with('[') {
        let header_end = span.start + covered.find('\n').unwrap_or(covered.len());
        let header = keys
            .iter()
            .rfind(|(range, _)| range.start > span.start && range.end <= header_end);
        if let Some((_, key)) = header {
            return Some(key.clone());
        }
    }
    keys.iter()
        .rfind(|(range, _)| range.end <= span.start)
        .map(|(_, key)| key.clone())
}

/// The 1-based line of byte `offset`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A TOML document reduced to its keys and where each is written.
enum Node {
    Table(Vec<(Spanned<String>, Node)>),
    Array(Vec<Node>),
    Leaf,
}

fn collect(node: &Node, path: &mut Vec<String>, out: &mut Vec<(Range<usize>, String)>) {
    match node {
        Node::Table(entries) => {
            for (key, value) in entries {
                path.push(segment(key.get_ref()));
                out.push((key.span(), path.join(".")));
                collect(value, path, out);
                path.pop();
            }
        }
        Node::Array(items) => {
            for item in items {
                collect(item, path, out);
            }
        }
        Node::Leaf => {}
    }
}

/// A key segment as it would be written: bare if it can be, else quoted.
fn segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Table(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(text: &str, needle: &str) -> Option<String> {
        let start = text.find(needle).expect("the needle is in the text");
        key_at(text, start..start + needle.len())
    }

    #[test]
    fn keys_are_found_by_their_own_span_or_their_values() {
        let text = "socket_root = \"/x\"\n[sidecar]\nmax_reed_bytes = 5\n\
                    [limits]\nmax.pids = \"x\"\n[limits.default]\ncpu = true\n\
                    \"quoted key\".inner = { deep = [1, \"two\"] }\n";
        assert_eq!(
            key_of(text, "max_reed_bytes").unwrap(),
            "sidecar.max_reed_bytes"
        );
        assert_eq!(key_of(text, "\"x\"").unwrap(), "limits.max.pids");
        assert_eq!(key_of(text, "true").unwrap(), "limits.default.cpu");
        assert_eq!(
            key_of(text, "\"two\"").unwrap(),
            "limits.default.\"quoted key\".inner.deep"
        );
        assert_eq!(key_of(text, "\"/x\"").unwrap(), "socket_root");
    }

    #[test]
    fn a_table_header_names_its_last_key() {
        let text = "allow_exec = true\n[socket_root.inner]\nx = 1\n";
        let start = text.find('[').unwrap();
        assert_eq!(
            key_at(text, start..text.len() - 1).unwrap(),
            "socket_root.inner"
        );
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
