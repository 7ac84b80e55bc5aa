//! The crate's top-level modules form layers: each may import only from
//! modules of a lower layer, so there is no import cycle between them.
//!
//! This reads `src/` and fails when a module imports a module of its own or a
//! higher layer (naming the offending file and import), when an import cycle
//! appears, or when a new top-level module is not placed in the table below.
//! The same table is stated in ARCHITECTURE.md ("Layers").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Module → layer. Lower layers know nothing of higher ones.
const LAYERS: &[(&str, u8)] = &[
    // Configuration and domain values.
    ("config", 0),
    ("metrics", 0),
    ("failure", 1),
    ("deliverable", 1),
    ("pcm", 1),
    ("spoken", 1),
    ("job", 2),
    ("audio", 2),
    ("plan", 2),
    ("quality", 2),
    ("captions", 2),
    ("wire", 3),
    ("stitch", 3),
    ("align", 3),
    ("render", 3),
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
    ("testing", 8),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules declared in `lib.rs` (`mod x;` of any visibility).
fn declared_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let file = syn::parse_file(&lib).expect("lib.rs parses");
    file.items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Mod(m) => Some(m.ident.to_string()),
            _ => None,
        })
        .collect()
}

/// Every `.rs` file of a top-level module: `x.rs` and the tree under `x/`
/// (both, when `x.rs` declares submodules kept in `x/`).
fn files_of(module: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let file = src().join(format!("{module}.rs"));
    if file.exists() {
        out.push(file);
    }
    let mut dirs: Vec<PathBuf> = vec![src().join(module)]
        .into_iter()
        .filter(|d| d.is_dir())
        .collect();
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

/// Top-level modules named after `crate::` in a file's code, read from its
/// syntax tree (`syn`): `use` trees of any shape (grouped, nested, spread
/// over lines by rustfmt), paths in expressions and types, and paths inside
/// macro calls. Comments and doc links are not code, so they never count.
fn imports_in(code: &str) -> BTreeSet<String> {
    let file = syn::parse_file(code).unwrap_or_else(|e| panic!("cannot parse: {e}"));
    let mut imports = Imports::default();
    imports.visit_file(&file);
    imports.0
}

#[derive(Default)]
struct Imports(BTreeSet<String>);

impl Imports {
    fn use_tree(&mut self, tree: &syn::UseTree, after_crate: bool) {
        match tree {
            syn::UseTree::Path(p) if after_crate => {
                self.0.insert(p.ident.to_string());
            }
            syn::UseTree::Path(p) if p.ident == "crate" => self.use_tree(&p.tree, true),
            syn::UseTree::Name(n) if after_crate => {
                self.0.insert(n.ident.to_string());
            }
            syn::UseTree::Rename(r) if after_crate => {
                self.0.insert(r.ident.to_string());
            }
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(item, after_crate);
                }
            }
            _ => {}
        }
    }
}

impl<'ast> Visit<'ast> for Imports {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&item.tree, false);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if let (Some(first), Some(second)) = (segments.next(), segments.next())
            && first.ident == "crate"
        {
            self.0.insert(second.ident.to_string());
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Macro arguments are tokens, not syntax: find `crate :: name` in them.
        let tokens = mac.tokens.to_string();
        let mut rest = tokens.as_str();
        while let Some(i) = rest.find("crate :: ") {
            rest = &rest[i + "crate :: ".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                self.0.insert(name);
            }
        }
        syn::visit::visit_macro(self, mac);
    }
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
    // The parser finds plain, nested and grouped imports (also spread over
    // lines as rustfmt writes them), paths in code and in macro calls, and
    // skips comments and doc links.
    let code = r#"
use crate::a::X;
use crate::{b, c::Y};
use crate::{
    h::{self, I},
    j,
};
/// [`crate::g`]
fn f() -> crate::k::T {
    // crate::e
    let z = crate::d::f();
    tracing::info!(x = %crate::m::N);
}
"#;
    let found: Vec<String> = imports_in(code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "h", "j", "k", "m"]);
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
