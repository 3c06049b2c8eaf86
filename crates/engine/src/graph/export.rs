//! Writers of the sample graph in the formats other tools read: JSON (the engine's own
//! shape), CSV (one row per edge, for spreadsheets), GraphML (Gephi, yEd, networkx) and
//! Graphviz DOT.

use std::fmt::Write as _;

use super::{Direction, Edge, Graph, Node};
use crate::scan::RelationKind;
use crate::{EngineError, MatchKind};

/// A graph file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Json,
    Csv,
    GraphMl,
    Dot,
}

/// Writes `graph` in `format`.
pub fn export(graph: &Graph, format: ExportFormat) -> Result<String, EngineError> {
    Ok(match format {
        ExportFormat::Json => {
            serde_json::to_string_pretty(graph).map_err(|e| EngineError::Encode(e.to_string()))?
        }
        ExportFormat::Csv => csv(graph),
        ExportFormat::GraphMl => graphml(graph),
        ExportFormat::Dot => dot(graph),
    })
}

fn kind_name(k: RelationKind) -> &'static str {
    match k {
        RelationKind::Sample => "sample",
        RelationKind::Duplicate => "duplicate",
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Directed => "directed",
        Direction::SameYear => "same_year",
        Direction::UnknownYear => "unknown_year",
    }
}

fn transform_name(t: MatchKind) -> &'static str {
    match t {
        MatchKind::Exact => "exact",
        MatchKind::Speed => "speed",
        MatchKind::Stretch => "stretch",
    }
}

/// The edge's attributes as (name, value) text pairs, shared by CSV and GraphML.
fn edge_fields(e: &Edge) -> Vec<(&'static str, String)> {
    vec![
        ("kind", kind_name(e.kind).to_string()),
        ("direction", direction_name(e.direction).to_string()),
        ("from_start_s", format!("{:.3}", e.from_start_s)),
        ("from_end_s", format!("{:.3}", e.from_end_s)),
        ("to_start_s", format!("{:.3}", e.to_start_s)),
        ("to_end_s", format!("{:.3}", e.to_end_s)),
        ("tempo", format!("{:.5}", e.tempo)),
        ("pitch_semitones", format!("{:.3}", e.pitch_semitones)),
        (
            "speed",
            e.speed.map_or_else(String::new, |s| format!("{s:.5}")),
        ),
        ("transform", transform_name(e.transform).to_string()),
        ("loop_count", e.loop_count.to_string()),
        ("score", format!("{:.4}", e.score)),
    ]
}

fn node_fields(n: &Node) -> Vec<(&'static str, String)> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    vec![
        ("title", text(&n.title)),
        ("artist", text(&n.artist)),
        ("album", text(&n.album)),
        ("year", n.year.map_or_else(String::new, |y| y.to_string())),
        ("path", n.path.clone()),
    ]
}

/// One CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One row per edge: both tracks' ids and names, then the edge's fields.
fn csv(graph: &Graph) -> String {
    let mut header: Vec<String> = Vec::new();
    for end in ["from", "to"] {
        header.push(format!("{end}_id"));
        for (name, _) in node_fields(&Node::new(0, super::unknown_track(0))) {
            header.push(format!("{end}_{name}"));
        }
    }
    header.extend(
        edge_fields(&dummy_edge())
            .into_iter()
            .map(|(n, _)| n.to_string()),
    );
    let mut out = header.join(",") + "\n";
    for e in &graph.edges {
        let mut row: Vec<String> = Vec::new();
        for id in [e.from, e.to] {
            row.push(id.to_string());
            let fields = graph
                .node(id)
                .map(node_fields)
                .unwrap_or_else(|| node_fields(&Node::new(id, super::unknown_track(id))));
            row.extend(fields.into_iter().map(|(_, v)| csv_field(&v)));
        }
        row.extend(edge_fields(e).into_iter().map(|(_, v)| csv_field(&v)));
        out += &row.join(",");
        out.push('\n');
    }
    out
}

fn dummy_edge() -> Edge {
    Edge {
        from: 0,
        to: 0,
        kind: RelationKind::Sample,
        direction: Direction::UnknownYear,
        from_start_s: 0.0,
        from_end_s: 0.0,
        to_start_s: 0.0,
        to_end_s: 0.0,
        tempo: 1.0,
        pitch_semitones: 0.0,
        speed: None,
        transform: MatchKind::Exact,
        loop_count: 0,
        occurrences: Vec::new(),
        score: 0.0,
        significance: 0.0,
        found_both_ways: false,
    }
}

/// Text escaped for XML content and attribute values. Characters XML 1.0 forbids (most
/// C0 controls) are dropped, since no escape makes them legal.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

/// GraphML: directed by default; edges whose direction is unknown carry
/// `directed="false"`, as the GraphML schema allows per edge.
fn graphml(graph: &Graph) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <graphml xmlns=\"http://graphml.graphdrawing.org/xmlns\">\n",
    );
    let node_keys = node_fields(&Node::new(0, super::unknown_track(0)));
    for (name, _) in &node_keys {
        let ty = if *name == "year" { "int" } else { "string" };
        let _ = writeln!(
            out,
            "  <key id=\"n_{name}\" for=\"node\" attr.name=\"{name}\" attr.type=\"{ty}\"/>"
        );
    }
    for (name, _) in edge_fields(&dummy_edge()) {
        let ty = match name {
            "kind" | "direction" | "transform" => "string",
            "loop_count" => "int",
            _ => "double",
        };
        let _ = writeln!(
            out,
            "  <key id=\"e_{name}\" for=\"edge\" attr.name=\"{name}\" attr.type=\"{ty}\"/>"
        );
    }
    out.push_str("  <graph id=\"samples\" edgedefault=\"directed\">\n");
    for n in &graph.nodes {
        let _ = writeln!(out, "    <node id=\"t{}\">", n.id);
        for (name, value) in node_fields(n) {
            if !value.is_empty() {
                let _ = writeln!(out, "      <data key=\"n_{name}\">{}</data>", xml(&value));
            }
        }
        out.push_str("    </node>\n");
    }
    for (i, e) in graph.edges.iter().enumerate() {
        let directed = if e.direction == Direction::Directed {
            ""
        } else {
            " directed=\"false\""
        };
        let _ = writeln!(
            out,
            "    <edge id=\"e{i}\" source=\"t{}\" target=\"t{}\"{directed}>",
            e.from, e.to
        );
        for (name, value) in edge_fields(e) {
            if !value.is_empty() {
                let _ = writeln!(out, "      <data key=\"e_{name}\">{}</data>", xml(&value));
            }
        }
        out.push_str("    </edge>\n");
    }
    out.push_str("  </graph>\n</graphml>\n");
    out
}

/// A DOT double-quoted string: backslashes and quotes escaped, line breaks as `\n`.
fn dot_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Graphviz DOT: an arrow from the sampling track to the sampled one; undirected shared
/// material as a dashed line, duplicates as a dotted one, both without arrowheads.
fn dot(graph: &Graph) -> String {
    let mut out = String::from("digraph samples {\n  node [shape=box];\n");
    for n in &graph.nodes {
        let _ = writeln!(out, "  t{} [label={}];", n.id, dot_string(&n.full_name()));
    }
    for e in &graph.edges {
        let what = match (e.kind, e.speed) {
            (RelationKind::Duplicate, _) => "duplicate".to_string(),
            (_, Some(s)) => format!("x{s:.2} ({:+.1} st)", e.pitch_semitones),
            _ => format!("tempo x{:.2}, {:+.1} st", e.tempo, e.pitch_semitones),
        };
        let label = format!("{what}, score {:.2}", e.score);
        let style = match (e.kind, e.direction) {
            (RelationKind::Duplicate, _) => ", dir=none, style=dotted",
            (_, Direction::Directed) => "",
            _ => ", dir=none, style=dashed",
        };
        let _ = writeln!(
            out,
            "  t{} -> t{} [label={}{style}];",
            e.from,
            e.to,
            dot_string(&label)
        );
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NASTY: &str = "Rock & \"Roll\" <live>, 'quoted'\\ \u{1}take\nfinal";

    fn graph() -> Graph {
        let node = |id, title: &str, year| Node {
            id,
            title: Some(title.to_string()),
            artist: Some("Artist, The".to_string()),
            album: None,
            year,
            musicbrainz_recording_id: None,
            musicbrainz_release_id: None,
            path: format!("/m/{id}.mp3"),
            duration_s: 100.0,
        };
        let mut sampled = dummy_edge();
        sampled.from = 2;
        sampled.to = 1;
        sampled.direction = Direction::Directed;
        sampled.speed = Some(0.8);
        let mut unknown = dummy_edge();
        unknown.from = 2;
        unknown.to = 3;
        Graph {
            nodes: vec![
                node(1, NASTY, Some(1973)),
                node(2, "Plain", Some(2010)),
                node(3, "Third", None),
            ],
            edges: vec![sampled, unknown],
        }
    }

    /// A small XML well-formedness check: balanced tags, quoted attributes, and only the
    /// five predefined entities; returns the text content of every element in order.
    fn check_xml(doc: &str) -> Vec<String> {
        let body = doc
            .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
            .expect("XML declaration");
        let mut stack: Vec<String> = Vec::new();
        let mut texts = Vec::new();
        let mut rest = body;
        let unescape = |s: &str| -> String {
            let mut out = String::new();
            let mut r = s;
            while let Some(i) = r.find('&') {
                out.push_str(&r[..i]);
                let end = r[i..].find(';').expect("entity ends with ;") + i;
                out.push(match &r[i + 1..end] {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "apos" => '\'',
                    other => panic!("unknown entity &{other};"),
                });
                r = &r[end + 1..];
            }
            out + r
        };
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            assert!(!text.contains('>'), "raw > in text: {text}");
            if !text.trim().is_empty() {
                texts.push(unescape(text));
            }
            let close = rest[open..].find('>').expect("tag closes") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "< inside a tag: {tag}");
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
            for value in tag.split('"').skip(1).step_by(2) {
                unescape(value);
            }
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().expect("tag name");
                stack.push(name.to_string());
            }
            rest = &rest[close + 1..];
        }
        assert!(rest.trim().is_empty(), "text after the root: {rest}");
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        texts
    }

    #[test]
    fn graphml_is_well_formed_and_round_trips_text() {
        let doc = export(&graph(), ExportFormat::GraphMl).expect("exports");
        let texts = check_xml(&doc);
        let want: String = NASTY.chars().filter(|&c| c != '\u{1}').collect();
        assert!(texts.contains(&want), "{texts:?}");
        assert!(doc.contains("<edge id=\"e0\" source=\"t2\" target=\"t1\">"));
        assert!(doc.contains("source=\"t2\" target=\"t3\" directed=\"false\""));
    }

    #[test]
    fn dot_quotes_labels() {
        let doc = export(&graph(), ExportFormat::Dot).expect("exports");
        let line = doc
            .lines()
            .find(|l| l.starts_with("  t1 "))
            .expect("node 1");
        // Unquote the label the way Graphviz does and get the name back.
        let quoted = line
            .strip_prefix("  t1 [label=\"")
            .and_then(|l| l.strip_suffix("\"];"))
            .expect("quoted label");
        let mut label = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => label.push('\n'),
                    Some(c) => label.push(c),
                    None => panic!("dangling backslash"),
                },
                '"' => panic!("unescaped quote in {quoted}"),
                c => label.push(c),
            }
        }
        assert_eq!(label, format!("{NASTY} (Artist, The, 1973)"));
        assert!(doc.contains("  t2 -> t1 [label=\"x0.80 (+0.0 st), score 0.00\"];"));
        assert!(doc.contains("  t2 -> t3 ["));
        assert!(doc.contains("dir=none, style=dashed"));
        assert!(doc.starts_with("digraph samples {") && doc.ends_with("}\n"));
    }

    #[test]
    fn csv_quotes_fields_and_keeps_one_row_per_edge() {
        let doc = export(&graph(), ExportFormat::Csv).expect("exports");
        let rows: Vec<Vec<String>> = crate::catalogue::csv_records(&doc)
            .expect("parses")
            .into_iter()
            .map(|(_, fields)| fields)
            .collect();
        assert_eq!(rows.len(), 3, "{doc}");
        let header = &rows[0];
        assert_eq!(header.len(), rows[1].len());
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .unwrap_or_else(|| panic!("no column {name}"))
        };
        assert_eq!(rows[1][col("to_title")], NASTY);
        assert_eq!(rows[1][col("to_artist")], "Artist, The");
        assert_eq!(rows[1][col("direction")], "directed");
        assert_eq!(rows[2][col("direction")], "unknown_year");
        assert_eq!(rows[2][col("to_year")], "");
    }

    #[test]
    fn json_is_the_graph() {
        let doc = export(&graph(), ExportFormat::Json).expect("exports");
        let v: serde_json::Value = serde_json::from_str(&doc).expect("valid JSON");
        assert_eq!(v["nodes"][0]["title"], NASTY);
        assert_eq!(v["edges"][0]["direction"], "directed");
        assert_eq!(v["edges"][1]["kind"], "sample");
    }
}
