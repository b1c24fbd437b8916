//! The module layering of the README's Layout section holds: every `crate::` path in `src/` points
//! to a module of a lower layer. A new upward or sideways import (the start of a cycle), or a new
//! module nobody placed in the table, fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module -> layer, from the README's layer table.
fn layers() -> BTreeMap<String, u32> {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let layout = &readme[readme.find("## Layout").expect("a Layout section")..];
    let mut layers = BTreeMap::new();
    for line in layout
        .lines()
        .take_while(|l| !l.starts_with("## Operations"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, layer, modules, _] = cells.as_slice() else {
            continue;
        };
        let Ok(layer) = layer.parse::<u32>() else {
            continue;
        };
        for module in modules.split(',') {
            layers.insert(module.trim().trim_matches('`').to_string(), layer);
        }
    }
    assert!(
        layers.len() > 10,
        "the layer table was not found: {layers:?}"
    );
    layers
}

/// The code of a file without its unit tests and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines()
        .map(|line| line.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names with `crate::`, including `use crate::{a, b::c}`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: those at brace depth 0.
            let mut depth = 0;
            let mut name = String::new();
            let mut at_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_start = true,
                    c if depth == 0 && at_start && (c.is_alphanumeric() || c == '_') => {
                        name.push(c)
                    }
                    c if depth == 0 && at_start && !name.is_empty() && !c.is_whitespace() => {
                        found.insert(std::mem::take(&mut name));
                        at_start = false;
                    }
                    _ => {}
                }
                if c == ',' && depth == 0 && !name.is_empty() {
                    found.insert(std::mem::take(&mut name));
                }
            }
            if !name.is_empty() {
                found.insert(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_import_points_down_the_layers() {
    let layers = layers();
    let mut files = Vec::new();
    source_files(Path::new("src"), &mut files);
    let mut problems = Vec::new();
    for file in files {
        let relative = file.strip_prefix("src").unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(&own) = layers.get(&top) else {
            problems.push(format!("module {top} is not in the README's layer table"));
            continue;
        };
        for import in imports(&code(&file)) {
            if import == top {
                continue;
            }
            match layers.get(&import) {
                Some(&layer) if layer < own => {}
                Some(&layer) => problems.push(format!(
                    "{}: {top} (layer {own}) imports {import} (layer {layer})",
                    file.display()
                )),
                None => problems.push(format!(
                    "{}: {top} imports {import}, which is not in the layer table",
                    file.display()
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reader_sees_grouped_and_nested_imports() {
    let found = imports(
        "use crate::{admin, gateway::{A, B}, pipeline};\nlet x = crate::metrics::handle();",
    );
    let expected: BTreeSet<String> = ["admin", "gateway", "pipeline", "metrics"]
        .map(String::from)
        .into();
    assert_eq!(found, expected);
}
