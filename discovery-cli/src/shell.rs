//! The interactive shell, and scripts read from standard input.
//!
//! Both read lines, split each into words like a POSIX shell would (quotes and
//! backslashes, by `shell-words`), parse the words with the same clap types as the program's
//! arguments, and run the command. An error is printed and the session goes on.
//!
//! rustyline blocks its thread while it waits for a key, so the shell does not run inside
//! the runtime: it reads on the main thread and runs each command with
//! [`Runtime::block_on`], while the client's worker lives on the runtime's own threads.
//!
//! Tab completes command names, options, and type names after `query`, `watch` and
//! `register --type`: those are asked of the server (`list_types`) when completion wants
//! them, kept for a few seconds, and never waited for longer than `--timeout`; a server
//! that does not answer in time only means no type names.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use clap::error::ErrorKind as ClapErrorKind;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};
use tokio::runtime::{Handle, Runtime};

use crate::args::{LINE_COMMANDS, Line};
use crate::commands::{self, Context, Exit, Failure};

/// The prompt of the interactive shell.
const PROMPT: &str = "discovery> ";

/// How long the type names fetched for completion are used before they are asked again.
const TYPES_KEPT: Duration = Duration::from_secs(5);

/// What a line came to.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// A blank line or a comment: nothing ran.
    Nothing,
    /// A command ran (or failed to parse) with this exit.
    Ran(Exit),
    /// `exit` or `quit`.
    Quit,
}

/// Runs the interactive shell until `exit`, `quit` or end of input (Ctrl-D); Ctrl-C clears
/// the line. History is kept in `~/.discovery_cli_history` when there is a home directory.
///
/// The shell exits 0 however its commands ended (each one's error was shown); it exits 1
/// only when the terminal itself fails.
pub fn interactive(runtime: &Runtime, ctx: &Context, json: bool) -> Exit {
    let mut editor: Editor<LineHelper, DefaultHistory> = match Editor::new() {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("discovery-cli: cannot start the shell: {e}");
            return Exit::Failure;
        }
    };
    editor.set_helper(Some(LineHelper {
        types: TypeNames {
            runtime: runtime.handle().clone(),
            ctx: ctx.clone(),
            cached: Mutex::new(None),
        },
    }));
    let history = history_file();
    if let Some(path) = &history {
        // A missing file is the first session.
        let _ = editor.load_history(path);
    }
    eprintln!(
        "discovery shell on {}: type `help` for commands, `exit` to leave",
        ctx.server
    );
    let exit = loop {
        match editor.readline(PROMPT) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if run_line(runtime, ctx, json, &line) == Step::Quit {
                    break Exit::Success;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break Exit::Success,
            Err(e) => {
                eprintln!("discovery-cli: cannot read the terminal: {e}");
                break Exit::Failure;
            }
        }
    };
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    exit
}

/// Runs the commands of a script, one per line, until its end or `exit`. Blank lines and
/// lines starting with `#` are skipped.
///
/// Returns [`Exit::Success`] when every command succeeded, else the exit of the last one
/// that did not (so `heartbeat` of a gone instance followed by a good `query` exits 3).
pub fn script(runtime: &Runtime, ctx: &Context, json: bool, input: impl BufRead) -> Exit {
    let mut last_failure = Exit::Success;
    for line in input.lines() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!("discovery-cli: cannot read standard input: {e}");
                return Exit::Failure;
            }
        };
        match run_line(runtime, ctx, json, &line) {
            Step::Nothing | Step::Ran(Exit::Success) => {}
            Step::Ran(exit) => last_failure = exit,
            Step::Quit => break,
        }
    }
    last_failure
}

/// Parses and runs one line, printing its data to stdout and any error to stderr.
fn run_line(runtime: &Runtime, ctx: &Context, json: bool, line: &str) -> Step {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Step::Nothing;
    }
    let words = match shell_words::split(trimmed) {
        Ok(words) => words,
        Err(e) => {
            eprintln!("discovery-cli: cannot split the line: {e}");
            return Step::Ran(Exit::Usage);
        }
    };
    if matches!(words.first().map(String::as_str), Some("exit" | "quit")) {
        return Step::Quit;
    }
    let parsed = match Line::try_parse_from(&words) {
        Ok(parsed) => parsed,
        Err(e) => return Step::Ran(clap_error(&e)),
    };
    let mut stdout = io::stdout().lock();
    let result = runtime.block_on(commands::run(
        ctx,
        &parsed.command,
        json || parsed.json,
        &mut stdout,
    ));
    drop(stdout);
    Step::Ran(report(result))
}

/// Prints a command's failure, if any, and returns its exit.
pub fn report(result: Result<Exit, Failure>) -> Exit {
    match result {
        Ok(exit) => exit,
        Err(failure) => {
            eprintln!("discovery-cli: {failure}");
            failure.exit
        }
    }
}

/// Help asked for (`help`, `help query`, `query --help`) goes to stdout and succeeds; a
/// usage error goes to stderr and is a usage failure.
fn clap_error(error: &clap::Error) -> Exit {
    match error.kind() {
        ClapErrorKind::DisplayHelp
        | ClapErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        | ClapErrorKind::DisplayVersion => {
            let mut stdout = io::stdout().lock();
            let _ = write!(stdout, "{error}");
            let _ = stdout.flush();
            Exit::Success
        }
        _ => {
            eprint!("{error}");
            Exit::Usage
        }
    }
}

/// Where the shell keeps its history between sessions.
fn history_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".discovery_cli_history"))
}

/// Completion for the shell: command names for the first word, options after a `-`, type
/// names where a type goes.
struct LineHelper {
    types: TypeNames,
}

/// The type names the server lists, fetched when completion asks and kept a few seconds.
struct TypeNames {
    runtime: Handle,
    ctx: Context,
    /// When the names were fetched, and the names.
    cached: Mutex<Option<(Instant, Vec<String>)>>,
}

impl TypeNames {
    /// The names, fetched again when the ones kept are older than [`TYPES_KEPT`]. Waits at
    /// most the `--timeout`; a server that does not answer in time gives the names kept,
    /// if any, or none.
    fn get(&self) -> Vec<String> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, names)) = cached.as_ref()
            && at.elapsed() < TYPES_KEPT
        {
            return names.clone();
        }
        let fetch = tokio::time::timeout(self.ctx.timeout, self.ctx.client.list_types());
        match self.runtime.block_on(fetch) {
            Ok(Ok(types)) => {
                let names: Vec<String> = types.into_iter().map(|t| t.service_type).collect();
                *cached = Some((Instant::now(), names.clone()));
                names
            }
            // Completion is a convenience: no names rather than an error in the prompt.
            Ok(Err(_)) | Err(_) => cached
                .as_ref()
                .map(|(_, names)| names.clone())
                .unwrap_or_default(),
        }
    }
}

impl Completer for LineHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(complete(&line[..pos], || self.types.get()))
    }
}

impl Hinter for LineHelper {
    type Hint = String;
}
impl Highlighter for LineHelper {}
impl Validator for LineHelper {}
impl Helper for LineHelper {}

/// The completions of the word that ends `before` (the line up to the cursor): where it
/// starts, and the candidates. `types` gives the type names, and is called only where a
/// type goes: the first argument of `query` and `watch`, the value of `register --type`.
fn complete(before: &str, types: impl FnOnce() -> Vec<String>) -> (usize, Vec<Pair>) {
    let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
    let word = &before[start..];
    let earlier: Vec<&str> = before[..start].split_whitespace().collect();
    let options: Vec<String> = match (earlier.as_slice(), earlier.last()) {
        ([], _) => LINE_COMMANDS.iter().map(|&name| name.to_owned()).collect(),
        _ if word.starts_with('-') => {
            let names: &[&str] = match earlier[0] {
                "register" => &[
                    "--type", "--ip", "--port", "--meta", "--ttl", "--json", "--help",
                ],
                "update" => &["--meta", "--json", "--help"],
                _ => &["--json", "--help"],
            };
            names.iter().map(|&name| name.to_owned()).collect()
        }
        (["query" | "watch"], _) | (["register", ..], Some(&"--type")) => types(),
        _ => Vec::new(),
    };
    let candidates = options
        .iter()
        .filter(|name| name.starts_with(word))
        .map(|name| Pair {
            display: name.clone(),
            replacement: format!("{name} "),
        })
        .collect();
    (start, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(before: &str) -> (usize, Vec<String>) {
        let (start, pairs) = complete(before, || panic!("no type goes here: {before:?}"));
        (start, pairs.into_iter().map(|p| p.display).collect())
    }

    fn with_types(before: &str) -> (usize, Vec<String>) {
        let types = || vec!["billing".to_owned(), "web".to_owned(), "worker".to_owned()];
        let (start, pairs) = complete(before, types);
        (start, pairs.into_iter().map(|p| p.display).collect())
    }

    #[test]
    fn the_first_word_completes_to_commands() {
        assert_eq!(
            names("he"),
            (0, vec!["heartbeat".to_owned(), "help".to_owned()])
        );
        assert_eq!(
            names("  qu"),
            (2, vec!["query".to_owned(), "quit".to_owned()])
        );
        assert_eq!(names("").1.len(), LINE_COMMANDS.len());
    }

    #[test]
    fn later_words_complete_to_the_commands_options() {
        assert_eq!(
            names("register --type web --p"),
            (20, vec!["--port".to_owned()])
        );
        assert_eq!(names("query web --j"), (10, vec!["--json".to_owned()]));
        assert_eq!(
            names("register --t"),
            (9, vec!["--type".to_owned(), "--ttl".to_owned()])
        );
        assert!(names("heartbeat 67e5").1.is_empty());
        assert!(names("query web ").1.is_empty(), "one type only");
    }

    #[test]
    fn a_type_completes_to_the_servers_types() {
        assert_eq!(
            with_types("query w"),
            (6, vec!["web".to_owned(), "worker".to_owned()])
        );
        assert_eq!(with_types("watch b"), (6, vec!["billing".to_owned()]));
        assert_eq!(with_types("register --type ").1.len(), 3);
        assert_eq!(
            with_types("register --ip 10.0.0.1 --type wo"),
            (30, vec!["worker".to_owned()])
        );
        assert!(with_types("register --ip ").1.is_empty());
    }
}
