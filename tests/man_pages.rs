//! The man pages in `deploy/man/` are the ones the current command lines render: one page per
//! program (`underpass.1`, `underpass-edge.1`) and one per subcommand (`underpass-run.1`,
//! `underpass-edge-tunnel-create.1`, ...), made by clap_mangen from
//! `underpass_connector::cli::Cli` and `underpass_edge::cli::Cli`.
//!
//! A page that differs, is missing or is left over from a removed subcommand fails the test;
//! `UNDERPASS_UPDATE_MAN=1 cargo test -p underpass-e2e --test man_pages` rewrites the folder.
//!
//! The pages carry the package version without the git commit that `--version` prints, so a
//! commit does not make them stale.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_mangen::Man;
use underpass_e2e::repo_root;

/// The environment variable that turns the check into a rewrite.
const UPDATE: &str = "UNDERPASS_UPDATE_MAN";

/// The man page of `command` and of each of its subcommands, recursively, by file name, the
/// way `clap_mangen::generate_to` names them (`underpass-edge-tunnel-create.1`).
fn render(command: clap::Command) -> BTreeMap<String, Vec<u8>> {
    // A man page is per release, not per commit: the bare package version.
    let mut command = command
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true);
    command.build();
    let source = format!("{} {}", command.get_name(), env!("CARGO_PKG_VERSION"));
    let mut pages = BTreeMap::new();
    walk(command, &source, &mut pages);
    pages
}

fn walk(command: clap::Command, source: &str, pages: &mut BTreeMap<String, Vec<u8>>) {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        walk(sub.clone(), source, pages);
    }
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned();
    // What `--help` prints after the options (clap_mangen would put it in one filled "EXTRA"
    // section, which breaks its columns): sections of its own, below.
    let after_help = command
        .get_after_long_help()
        .or_else(|| command.get_after_help())
        .map(ToString::to_string);
    let command = command
        .after_help(None::<&str>)
        .after_long_help(None::<&str>);
    let mut page = Vec::new();
    Man::new(command)
        .source(source)
        .manual("Underpass")
        .render(&mut page)
        .expect("render into memory");
    if let Some(text) = after_help {
        let sections = sections(&text);
        let text = String::from_utf8(page).expect("clap_mangen writes UTF-8");
        // Before the VERSION section if there is one, else at the end.
        let at = text.find(".SH VERSION").unwrap_or(text.len());
        page = format!("{}{sections}{}", &text[..at], &text[at..]).into_bytes();
    }
    pages.insert(format!("{name}.1"), page);
}

/// `--help`'s text after the options as man page sections: each paragraph whose first line is
/// a heading (`Environment:`, `Exit status:`) becomes a section of that name (`ENVIRONMENT`,
/// `EXIT STATUS`), its lines kept as they are (no filling); the other paragraphs go, filled,
/// to one `NOTES` section after them.
fn sections(text: &str) -> String {
    let mut out = String::new();
    let mut notes = String::new();
    for paragraph in text.split("\n\n") {
        let (first, body) = paragraph.split_once('\n').unwrap_or((paragraph, ""));
        match first.strip_suffix(':') {
            Some(heading) if !body.is_empty() => {
                out.push_str(&format!(".SH \"{}\"\n.nf\n", heading.to_uppercase()));
                for line in body.lines() {
                    out.push_str(&roff_line(line.strip_prefix("  ").unwrap_or(line)));
                    out.push('\n');
                }
                out.push_str(".fi\n");
            }
            _ => {
                notes.push_str(".PP\n");
                for line in paragraph.lines() {
                    notes.push_str(&roff_line(line.trim()));
                    notes.push('\n');
                }
            }
        }
    }
    if !notes.is_empty() {
        out.push_str(".SH NOTES\n");
        out.push_str(&notes);
    }
    out
}

/// `line` as roff text: backslashes and hyphens escaped, no control character at the start.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

fn expected_pages() -> BTreeMap<String, Vec<u8>> {
    let mut pages = render(underpass_connector::cli::Cli::command());
    pages.extend(render(underpass_edge::cli::Cli::command()));
    pages
}

/// The `*.1` files of `dir` (none if it does not exist).
fn checked_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "1"))
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a UTF-8 file name")
                .to_owned();
            let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, text)
        })
        .collect()
}

/// The first line where `a` and `b` differ, for the failure message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let mut a_lines = a.lines();
    let mut b_lines = b.lines();
    for number in 1.. {
        match (a_lines.next(), b_lines.next()) {
            (None, None) => break,
            (x, y) if x == y => continue,
            (x, y) => {
                return format!(
                    "line {number}: checked in {:?}, rendered {:?}",
                    x.unwrap_or("<end>"),
                    y.unwrap_or("<end>")
                )
            }
        }
    }
    "same lines, different bytes".into()
}

#[test]
fn man_pages_are_current() {
    let dir: PathBuf = repo_root().join("deploy/man");
    let expected = expected_pages();
    for page in [
        "underpass.1",
        "underpass-run.1",
        "underpass-check-config.1",
        "underpass-edge.1",
        "underpass-edge-serve.1",
        "underpass-edge-check-config.1",
        "underpass-edge-tunnel.1",
        "underpass-edge-tunnel-create.1",
    ] {
        assert!(expected.contains_key(page), "{page} is rendered");
    }
    let program = String::from_utf8_lossy(&expected["underpass-edge.1"]).into_owned();
    assert!(
        program.contains(".SH \"ENVIRONMENT\"\n.nf\nUNDERPASS_EDGE_CONFIG")
            && program.contains(".SH \"EXIT STATUS\"")
            && program.contains("EX_USAGE"),
        "the edge's page has its environment and exit status:\n{program}"
    );

    if std::env::var_os(UPDATE).is_some_and(|v| v == "1") {
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for name in checked_in(&dir).keys() {
            if !expected.contains_key(name) {
                let path = dir.join(name);
                std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
        for (name, page) in &expected {
            let path = dir.join(name);
            std::fs::write(&path, page).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        eprintln!("wrote {} man pages to {}", expected.len(), dir.display());
        return;
    }

    let actual = checked_in(&dir);
    let mut problems = Vec::new();
    for (name, page) in &expected {
        match actual.get(name) {
            None => problems.push(format!("{name}: missing")),
            Some(text) if text != page => {
                problems.push(format!("{name}: stale, {}", first_difference(text, page)))
            }
            Some(_) => {}
        }
    }
    for name in actual.keys().filter(|name| !expected.contains_key(*name)) {
        problems.push(format!("{name}: no such command any more"));
    }
    assert!(
        problems.is_empty(),
        "the man pages in {} are not what the current command lines render:\n  {}\nrun \
         `{UPDATE}=1 cargo test -p underpass-e2e --test man_pages` to rewrite them",
        dir.display(),
        problems.join("\n  ")
    );
}
