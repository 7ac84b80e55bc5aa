//! The crate's top-level modules form layers: each may import only from
//! modules of a lower layer, so there is no import cycle between them.
//!
//! This reads `src/` and fails when a module imports a module of its own or a
//! higher layer (naming the offending file and import), when an import cycle
//! appears, or when a new top-level module is not placed in the table below.
//! The same table is stated in ARCHITECTURE.md ("Layers").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → layer. Lower layers know nothing of higher ones.
const LAYERS: &[(&str, u8)] = &[
    // Configuration and domain values.
    ("config", 0),
    ("metrics", 0),
    ("failure", 1),
    ("job", 2),
    ("audio", 2),
    ("wire", 3),
    // Adapters.
    ("segmind", 4),
    ("storage", 4),
    ("broker", 4),
    ("http", 4),
    ("telemetry", 4),
    ("checkpoint", 5),
    // The worker.
    ("worker", 6),
    // Wiring and the command line.
    ("app", 7),
    ("submit", 7),
    ("check", 7),
    ("cli", 8),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules declared in `lib.rs`.
fn declared_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect()
}

/// Every `.rs` file of a top-level module (`x.rs` or the tree under `x/`).
fn files_of(module: &str) -> Vec<PathBuf> {
    let file = src().join(format!("{module}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut out = Vec::new();
    let mut dirs = vec![src().join(module)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// Top-level modules named after `crate::` in code (comments are skipped:
/// an intra-doc link is not an import).
fn imports_in(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let line = line.split(" //").next().unwrap_or(line);
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c};`: the first segment of each item.
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// Module → the other top-level modules it imports, with one file that does.
fn import_graph() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let modules = declared_modules();
    let mut graph = BTreeMap::new();
    for module in &modules {
        let mut edges = BTreeMap::new();
        for file in files_of(module) {
            let code = std::fs::read_to_string(&file).unwrap();
            for target in imports_in(&code) {
                if &target != module && modules.contains(&target) {
                    edges.entry(target).or_insert_with(|| file.clone());
                }
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

/// A cycle in `graph`, if any, as the list of modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, PathBuf>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn every_module_has_a_layer() {
    let layers: BTreeSet<String> = LAYERS.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(
        declared_modules(),
        layers,
        "place every top-level module of lib.rs in LAYERS (and in ARCHITECTURE.md)"
    );
}

#[test]
fn modules_import_only_from_lower_layers() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut violations = Vec::new();
    for (module, edges) in import_graph() {
        for (target, file) in edges {
            let (from, to) = (layer[module.as_str()], layer[target.as_str()]);
            if to >= from {
                violations.push(format!(
                    "{module} (layer {from}) imports {target} (layer {to}) in {}",
                    file.strip_prefix(src()).unwrap_or(&file).display()
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn there_is_no_import_cycle_between_top_level_modules() {
    if let Some(cycle) = find_cycle(&import_graph()) {
        panic!("import cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn the_checker_sees_imports_and_cycles() {
    // The parser finds plain, nested and grouped imports, and skips comments.
    let code = "use crate::a::X;\nuse crate::{b, c::Y};\nlet z = crate::d::f();\n// crate::e\n/// [`crate::g`]\n";
    let found: Vec<String> = imports_in(code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d"]);
    let edge = |to: &str| (to.to_owned(), PathBuf::new());
    let mut graph = BTreeMap::new();
    graph.insert("x".to_owned(), BTreeMap::from([edge("y")]));
    graph.insert("y".to_owned(), BTreeMap::from([edge("z")]));
    graph.insert("z".to_owned(), BTreeMap::new());
    assert_eq!(find_cycle(&graph), None);
    graph.insert("z".to_owned(), BTreeMap::from([edge("x")]));
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["x".into(), "y".into(), "z".into(), "x".into()])
    );
}

#[test]
fn the_worker_binary_does_not_contain_the_simulator() {
    // The simulator is a dev-dependency: tests link it, the binary must not.
    let binary = std::fs::read(env!("CARGO_BIN_EXE_tts-worker")).expect("the worker binary");
    for needle in [&b"segmind_sim"[..], b"[[sim:latency="] {
        assert!(
            !binary.windows(needle.len()).any(|w| w == needle),
            "the worker binary contains {:?}",
            String::from_utf8_lossy(needle)
        );
    }
}
