//! The loader's modules are layers, each importing only from the layers below it (README,
//! "Architecture"): the base (`errors`, `mode`, `clock`, the crate root), `kernel`, `conn`,
//! `policy`, `observe`, `shared_store`, `cli`. Reads the sources: every `crate::` path of a module, in `use`
//! groups too, must start in its own layer or a lower one.

use std::{fs, path::Path};

/// Layers from the bottom; a top-level file not named here is a folder's `mod.rs` or the base.
const LAYERS: [&str; 7] = [
    "base",
    "kernel",
    "conn",
    "policy",
    "observe",
    "shared_store",
    "cli",
];
/// The base: modules at the crate root every layer may use, and the root's own items.
const BASE: [&str; 5] = ["errors", "mode", "clock", "EBPF_OBJ", "VERSION"];
/// What the crate root re-exports, by the layer it comes from: `crate::LoaderError` is the
/// commands' error, as out of reach of the layers below as `crate::cli::error::LoaderError`.
const ROOT_REEXPORTS: [(&str, &str); 6] = [
    ("LoaderError", "cli"),
    ("Firewall", "kernel"),
    ("AttachedMode", "kernel"),
    ("InterfaceAttachment", "kernel"),
    ("XdpAttach", "kernel"),
    ("FilterMode", "base"),
];

fn rank(layer: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| *l == layer)
        .unwrap_or_else(|| panic!("`{layer}` is not a layer: put the module in one"))
}

/// The layer a `crate::` path's first segment names.
fn layer_of_segment(segment: &str) -> &str {
    if BASE.contains(&segment) {
        return "base";
    }
    ROOT_REEXPORTS
        .iter()
        .find(|(item, _)| *item == segment)
        .map_or(segment, |(_, layer)| layer)
}

/// The first segment of every `crate::` path in `source`, `use crate::{a::x, b}` included.
fn crate_paths(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // First segments of the group's items at depth 1.
            let mut depth = 1;
            let mut item_start = true;
            let mut word = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && (c.is_alphanumeric() || c == '_') => {
                        word.push(c);
                        continue;
                    }
                    _ => {}
                }
                if !word.is_empty() {
                    found.push(std::mem::take(&mut word));
                    item_start = c == ',';
                }
            }
        } else {
            let word: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(word);
        }
        rest = after;
    }
    found.retain(|w| !w.is_empty() && w != "self");
    found
}

fn visit(dir: &Path, layer: Option<&str>, problems: &mut Vec<String>, files: &mut usize) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if path.is_dir() {
            visit(&path, Some(layer.unwrap_or(&name)), problems, files);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") || (layer.is_none() && name == "main") {
            continue;
        }
        // Top-level files are the base (lib.rs only declares the layers).
        let own = layer.unwrap_or("base");
        if layer.is_none() && name == "lib" {
            continue;
        }
        *files += 1;
        // Code only: a doc link to a higher layer is not an import. Except in the base, which
        // every layer builds on: its docs name no layer either.
        let source: String = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|line| own == "base" || !line.trim_start().starts_with("//"))
            .flat_map(|line| [line, "\n"])
            .collect();
        for segment in crate_paths(&source) {
            let target = layer_of_segment(&segment);
            if rank(target) > rank(own) {
                problems.push(format!(
                    "{} ({own}) uses crate::{segment} ({target}, a higher layer)",
                    path.display()
                ));
            }
        }
    }
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (mut problems, mut files) = (Vec::new(), 0);
    visit(&src, None, &mut problems, &mut files);
    assert!(
        files > 30,
        "only {files} source files found under {}",
        src.display()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn crate_paths_are_read_in_use_groups_too() {
    let source = "use crate::{\n    kernel::pins::{self, PinDir},\n    errors::LoaderError,\n    cli,\n};\nlet x = crate::observe::stats::read();";
    assert_eq!(
        crate_paths(source),
        ["kernel", "errors", "cli", "observe"].map(String::from)
    );
}

#[test]
fn every_root_reexport_has_its_layer() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines().filter(|l| l.starts_with("pub use ")) {
        let items = line
            .trim_end_matches(';')
            .rsplit("::")
            .next()
            .unwrap()
            .trim_matches(|c| c == '{' || c == '}');
        for item in items.split(',').map(str::trim) {
            assert!(
                ROOT_REEXPORTS.iter().any(|(name, _)| *name == item),
                "lib.rs re-exports `{item}`: add it to ROOT_REEXPORTS with its layer"
            );
        }
    }
}
