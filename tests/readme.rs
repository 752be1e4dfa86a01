//! The README's examples are real: every `yaml` block is a config that `threatflow check`
//! accepts, unless the line before it marks it `<!-- fragment -->` (then it must still be
//! YAML).

mod common;

/// Each `yaml` block of the README: its first line number, whether it is marked as a
/// fragment, and its text.
fn yaml_blocks(readme: &str) -> Vec<(usize, bool, String)> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "```yaml" {
            let fragment = lines[..i]
                .iter()
                .rev()
                .find(|line| !line.trim().is_empty())
                .is_some_and(|line| line.trim() == "<!-- fragment -->");
            let start = i + 1;
            let end = (start..lines.len())
                .find(|&j| lines[j].trim() == "```")
                .expect("a closed block");
            blocks.push((start + 1, fragment, lines[start..end].join("\n") + "\n"));
            i = end;
        }
        i += 1;
    }
    blocks
}

#[test]
fn every_yaml_block_in_the_readme_is_a_config_that_passes_check_or_a_marked_fragment() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let blocks = yaml_blocks(&readme);
    assert!(blocks.len() >= 2, "found {} yaml blocks", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (line, fragment, text) in blocks {
        if fragment {
            if let Err(error) = yaml_serde::from_str::<yaml_serde::Value>(&text) {
                panic!("README.md line {line}: the fragment is not YAML: {error}");
            }
            continue;
        }
        let path = dir.path().join(format!("readme-{line}.yaml"));
        std::fs::write(&path, &text).unwrap();
        if let Err(report) = threatflow::cli::check::check(&path) {
            panic!(
                "README.md line {line}: the example does not pass `threatflow check`:\n{report}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 2, "{checked} complete examples");
}
