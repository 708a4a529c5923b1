//! Inputs that once broke a fuzz target (minimised by `cargo fuzz tmin`), replayed through
//! the same target body on every test run: `tests/fuzz-regressions/<target>/<file>`.
//!
//! Adding one: copy the minimised artifact into the directory of its target, under a name
//! that says what it broke (see `fuzz/README.md`).
#![cfg(not(loom))]

use agentwire_core::fuzzing;
use std::path::PathBuf;

#[test]
fn every_recorded_crash_stays_fixed() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut replayed = 0;
    let mut failed = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let run = fuzzing::target(name)
            .unwrap_or_else(|| panic!("{}: no fuzz target of that name", dir.display()));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("target directory")
            .map(|e| e.expect("directory entry").path())
            .collect();
        files.sort();
        for file in files {
            let input = std::fs::read(&file).expect("regression input");
            eprintln!("replaying {}", file.display());
            // Every file is replayed even when one fails, so the report names them all.
            if std::panic::catch_unwind(|| run(&input)).is_err() {
                failed.push(file.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(failed.is_empty(), "fuzz regressions are back: {failed:#?}");
    assert!(
        replayed > 0,
        "no regression inputs found under {}",
        root.display()
    );
}
