//! The modules of the crate import one another only one way: no module imports one that
//! imports it back, directly or through others. Read from the sources: every `use crate::`
//! of a module outside its unit tests is an arrow. Run with `--nocapture` to see them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module of `src/` and the modules it imports.
fn arrows() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut arrows = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src/ is readable") {
        let path = entry.expect("an entry of src/").path();
        let Some(module) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if module == "lib" || path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a source file");
        // The unit tests may use anything: they are not part of the module's design.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let imports: BTreeSet<String> = code
            .lines()
            .filter_map(|line| {
                let rest = line
                    .trim_start()
                    .strip_prefix("pub ")
                    .unwrap_or(line.trim_start());
                let path = rest.strip_prefix("use crate::")?;
                let end = path
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .unwrap_or(path.len());
                Some(path[..end].to_owned())
            })
            .filter(|import| import != module)
            .collect();
        arrows.insert(module.to_owned(), imports);
    }
    arrows
}

/// A cycle through `module`, if one is reachable from it.
fn cycle_from(
    module: &str,
    arrows: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(start) = path.iter().position(|m| m == module) {
        let mut cycle = path[start..].to_vec();
        cycle.push(module.to_owned());
        return Some(cycle);
    }
    if done.contains(module) {
        return None;
    }
    path.push(module.to_owned());
    for next in arrows.get(module).into_iter().flatten() {
        if let Some(cycle) = cycle_from(next, arrows, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(module.to_owned());
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let arrows = arrows();
    assert!(
        arrows.contains_key("worker"),
        "found the modules: {arrows:?}"
    );
    for (module, imports) in &arrows {
        let imports: Vec<&str> = imports.iter().map(String::as_str).collect();
        println!("{module} -> {}", imports.join(", "));
    }
    let mut done = BTreeSet::new();
    for module in arrows.keys() {
        if let Some(cycle) = cycle_from(module, &arrows, &mut Vec::new(), &mut done) {
            panic!(
                "the modules import each other in a circle: {}",
                cycle.join(" -> ")
            );
        }
    }
}
