//! `molt shell`: the Avi-style commands at a prompt. This module holds the
//! parts that do not run commands: the grammar (for help and completion),
//! splitting a line into words, and the line editor's helper. The binary
//! runs each line through the same parser and code as `molt WORDS...`.

use std::{
    borrow::Cow,
    path::Path,
    sync::{Arc, Mutex},
};

use rustyline::{
    Context, Helper,
    completion::{Completer, Pair},
    highlight::Highlighter,
    hint::Hinter,
    validate::Validator,
};

/// What may follow a command's fixed words.
#[derive(Debug, Clone, Copy)]
pub enum Tail {
    /// Only these flags, in any order.
    Flags(&'static [&'static str]),
    /// `image_path PATH`, then these flags.
    Image(&'static [&'static str]),
    /// One or more SE group names, then these flags.
    Groups(&'static [&'static str]),
}

/// One command of the shell.
#[derive(Debug, Clone, Copy)]
pub struct Command {
    /// The fixed words.
    pub words: &'static [&'static str],
    /// What follows them.
    pub tail: Tail,
    /// The synopsis shown by `help`.
    pub synopsis: &'static str,
    /// What it does.
    pub help: &'static str,
}

/// The words of `upgrade system` after `image_path PATH`: those that take
/// values, and its flags (a `se_groups` list ends at the next of them).
pub const SYSTEM_WORDS: &[&str] = &[
    "docker_image_path",
    "action_on_error",
    "se_groups",
    "pause_after",
    "plan_hash",
    "max_parallel_ses",
    "se_group_order",
    "max_transfers",
    "transfer_rate_mib",
    "force",
    "disruptive",
    "prechecks_only",
    "--no-wait",
    "--json",
];

/// The shell's commands: the `molt` CLI's operator commands plus the
/// shell's own (`help`, `history`, `exit`).
pub const COMMANDS: &[Command] = &[
    Command {
        words: &["upgrade", "system"],
        tail: Tail::Image(SYSTEM_WORDS),
        synopsis: "upgrade system image_path PATH [docker_image_path PATH] [se_groups NAME...] [pause_after NAME] [plan_hash H] [action_on_error suspend|continue|rollback] [max_parallel_ses N] [se_group_order parallel|series] [max_transfers N] [transfer_rate_mib N] [force] [disruptive] [prechecks_only] [--no-wait]",
        help: "upgrade every controller, then every SE group; PATH is a local package file (uploaded first) \
               or controller://upgrade_pkgs/FILE. A mixed cluster takes the vm nodes' controller.pkg as \
               image_path and the docker nodes' controller_docker.tgz as docker_image_path. prechecks_only \
               shows the checks and the impact on each virtual service and changes nothing. action_on_error \
               says what an SE failure does to its group: suspend (default), continue, or rollback. se_groups \
               upgrades the controllers and only these groups (the others stay on the old version until \
               `upgrade segroup`); pause_after upgrades that group first, alone, then pauses. The upgrade \
               profile: max_parallel_ses (SEs of a group at once, never two of one virtual service; default \
               the group's own, else 1), se_group_order (parallel or series), max_transfers (nodes staging \
               at once) and transfer_rate_mib (each transfer's cap)",
    },
    Command {
        words: &["upgrade", "segroup"],
        tail: Tail::Groups(&["--no-wait", "--json"]),
        synopsis: "upgrade segroup NAME... [--no-wait]",
        help: "upgrade SE groups left on the old version (not selected, aborted, rolled back) to the controllers' version",
    },
    Command {
        words: &["upgrade", "pause"],
        tail: Tail::Flags(&["--no-wait", "--json"]),
        synopsis: "upgrade pause [--no-wait]",
        help: "hold the running upgrade: what is in flight finishes (an SE rebooting comes back), nothing new starts",
    },
    Command {
        words: &["upgrade", "resume"],
        tail: Tail::Flags(&["--no-wait", "--json"]),
        synopsis: "upgrade resume [--no-wait]",
        help: "go on with a paused upgrade",
    },
    Command {
        words: &["upgrade", "abort"],
        tail: Tail::Flags(&["--no-wait", "--json"]),
        synopsis: "upgrade abort [--no-wait]",
        help: "stop the running upgrade: before the controllers commit they roll back; after, the SE phase stops \
               and each SE group ends on one version (partly upgraded groups roll back)",
    },
    Command {
        words: &["upgrade", "prestage"],
        tail: Tail::Image(&["docker_image_path", "--no-wait", "--json"]),
        synopsis: "upgrade prestage image_path PATH [docker_image_path PATH] [--no-wait]",
        help: "distribute and verify the image on every node; install nothing",
    },
    Command {
        words: &["show", "upgrade", "status"],
        tail: Tail::Flags(&["--watch", "--json"]),
        synopsis: "show upgrade status [--watch] [--json]",
        help: "the current or last upgrade; --watch redraws progress bars per phase every second until it ends \
               (Ctrl-C returns to the prompt)",
    },
    Command {
        words: &["show", "cluster"],
        tail: Tail::Flags(&["--json"]),
        synopsis: "show cluster [--json]",
        help: "every node: role, address, version, state, SE group and staged images",
    },
    Command {
        words: &["resume", "segroup"],
        tail: Tail::Groups(&["skip_suspended", "--no-wait"]),
        synopsis: "resume segroup NAME... [skip_suspended] [--no-wait]",
        help: "resume suspended SE groups; skip_suspended leaves the SEs that failed on the old version",
    },
    Command {
        words: &["rollback", "segroup"],
        tail: Tail::Groups(&["--no-wait"]),
        synopsis: "rollback segroup NAME... [--no-wait]",
        help: "return SE groups to the previous version",
    },
    Command {
        words: &["rollback", "system"],
        tail: Tail::Flags(&["--no-wait"]),
        synopsis: "rollback system [--no-wait]",
        help: "after a completed upgrade: every SE group, then the controllers, back to the previous version \
               (the other slot), as HA-aware as an upgrade",
    },
    Command { words: &["help"], tail: Tail::Flags(&[]), synopsis: "help [COMMAND]", help: "this list" },
    Command {
        words: &["history"],
        tail: Tail::Flags(&[]),
        synopsis: "history",
        help: "the commands entered so far (kept across sessions)",
    },
    Command {
        words: &["exit"],
        tail: Tail::Flags(&[]),
        synopsis: "exit",
        help: "leave the shell (also: quit, Ctrl-D)",
    },
    Command { words: &["quit"], tail: Tail::Flags(&[]), synopsis: "quit", help: "leave the shell" },
];

/// `help` or `help WORD...`: the commands whose words start with `topic`.
pub fn help(topic: &[String]) -> String {
    let matching: Vec<&Command> = COMMANDS
        .iter()
        .filter(|c| topic.iter().zip(c.words.iter()).all(|(t, w)| w.starts_with(t.as_str())))
        .filter(|c| c.words.len() >= topic.len() || topic.is_empty())
        .collect();
    if matching.is_empty() {
        return format!("no command starts with {:?}; `help` lists them all\n", topic.join(" "));
    }
    let mut out = String::new();
    for c in matching {
        out.push_str(&format!("  {}\n      {}\n", c.synopsis, c.help));
    }
    if topic.is_empty() {
        out.push_str("Tab completes commands, options, SE group names and file paths; ↑/↓ walk the history.\n");
    }
    out
}

/// Splits a line into words: blanks separate, quotes group, `\` escapes.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = vec![];
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                cur.push(chars.next().ok_or("the line ends in a lone backslash")?);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unclosed {q} quote"));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// What can complete `partial` after `words`; `groups` are the cluster's SE
/// groups. Paths are completed from the file system.
pub fn candidates(words: &[String], partial: &str, groups: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for c in COMMANDS {
        let n = words.len().min(c.words.len());
        if words[..n] != c.words[..n] {
            continue;
        }
        if words.len() < c.words.len() {
            out.push(c.words[words.len()].to_owned());
            continue;
        }
        let rest = &words[c.words.len()..];
        let unused = |flags: &[&str]| -> Vec<String> {
            flags.iter().filter(|f| !rest.iter().any(|w| w == *f)).map(|f| (*f).to_owned()).collect()
        };
        match c.tail {
            Tail::Flags(flags) => out.extend(unused(flags)),
            Tail::Image(flags) => match rest {
                [] => out.push("image_path".into()),
                [w] if w == "image_path" => return paths(partial),
                [.., w] if w == "docker_image_path" => return paths(partial),
                [.., w] if w == "action_on_error" => {
                    out.extend(["continue", "rollback", "suspend"].map(String::from));
                }
                [.., w] if w == "pause_after" => out.extend(groups.iter().cloned()),
                [.., w] if w == "se_group_order" => out.extend(["parallel", "series"].map(String::from)),
                [.., w]
                    if ["max_parallel_ses", "max_transfers", "transfer_rate_mib", "plan_hash"]
                        .contains(&w.as_str()) => {}
                [w, .., last] if w == "image_path" && (last == "se_groups" || in_group_list(rest)) => {
                    out.extend(groups.iter().filter(|g| !rest.contains(g)).cloned());
                    if last != "se_groups" {
                        out.extend(unused(flags));
                    }
                }
                [w, ..] if w == "image_path" => out.extend(unused(flags)),
                _ => {}
            },
            Tail::Groups(flags) => {
                out.extend(groups.iter().filter(|g| !rest.contains(g)).cloned());
                if !rest.is_empty() {
                    out.extend(unused(flags));
                }
            }
        }
    }
    out.retain(|c| c.starts_with(partial));
    out.sort();
    out.dedup();
    out
}

/// Whether the last words are a `se_groups` list: names after `se_groups`,
/// and no keyword since.
fn in_group_list(rest: &[String]) -> bool {
    let keyword = |w: &String| w != "se_groups" && SYSTEM_WORDS.contains(&w.as_str());
    rest.iter().rposition(|w| w == "se_groups").is_some_and(|i| !rest[i + 1..].iter().any(keyword))
}

/// File and directory names that complete `partial` (directories end in `/`).
fn paths(partial: &str) -> Vec<String> {
    let (dir, prefix) = match partial.rfind('/') {
        Some(i) => (&partial[..=i], &partial[i + 1..]),
        None => ("", partial),
    };
    let Ok(entries) = std::fs::read_dir(if dir.is_empty() { Path::new(".") } else { Path::new(dir) }) else {
        return vec![];
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with(prefix) || (name.starts_with('.') && !prefix.starts_with('.')) {
                return None;
            }
            let slash = if e.path().is_dir() { "/" } else { "" };
            Some(format!("{dir}{name}{slash}"))
        })
        .collect();
    out.sort();
    out
}

/// Runs the prompt until `exit`, `quit` or end of input. Lines that are not
/// the shell's own go to `exec` as words, which answers whether the command
/// succeeded. Returns whether the last command succeeded.
pub fn run(
    prompt: &str,
    helper: ShellHelper,
    history: Option<&Path>,
    mut exec: impl FnMut(&[String]) -> bool,
) -> rustyline::Result<bool> {
    use rustyline::error::ReadlineError;
    let config = rustyline::Config::builder()
        .max_history_size(1000)?
        .history_ignore_dups(true)?
        .auto_add_history(false)
        .completion_type(rustyline::CompletionType::List)
        .build();
    let mut rl: rustyline::Editor<ShellHelper, rustyline::history::DefaultHistory> =
        rustyline::Editor::with_config(config)?;
    rl.set_helper(Some(helper));
    if let Some(h) = history {
        // No history yet is fine; an unreadable one is worth a word.
        if let Err(e) = rl.load_history(h)
            && h.exists()
        {
            eprintln!("warning: cannot read the history {}: {e}", h.display());
        }
    }
    let mut last_ok = true;
    loop {
        let line = match rl.readline(prompt) {
            Ok(l) => l,
            // Ctrl-C at the prompt clears the line, as in a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e),
        };
        let words = match split_words(&line) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                last_ok = false;
                continue;
            }
        };
        if words.is_empty() {
            continue;
        }
        rl.add_history_entry(line.trim())?;
        if let Some(h) = history
            && let Err(e) = rl.append_history(h)
        {
            eprintln!("warning: cannot write the history {}: {e}", h.display());
        }
        last_ok = match words[0].as_str() {
            "exit" | "quit" => break,
            "help" | "?" => {
                print!("{}", help(&words[1..]));
                true
            }
            "history" => {
                for (i, entry) in rl.history().iter().enumerate() {
                    println!("{:>5}  {entry}", i + 1);
                }
                true
            }
            _ => exec(&words),
        };
    }
    Ok(last_ok)
}

/// The line editor's helper: completion from [`candidates`].
#[derive(Debug, Default, Clone)]
pub struct ShellHelper {
    /// The cluster's SE group names, refreshed by the shell after each command.
    pub groups: Arc<Mutex<Vec<String>>>,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let Ok(words) = split_words(&before[..start]) else {
            return Ok((pos, vec![]));
        };
        let groups = self.groups.lock().expect("groups lock").clone();
        let found = candidates(&words, &before[start..], &groups);
        let single = found.len() == 1;
        let pairs = found
            .into_iter()
            .map(|c| {
                // A finished word gets its blank; a directory does not.
                let replacement = if single && !c.ends_with('/') { format!("{c} ") } else { c.clone() };
                Pair { display: c, replacement }
            })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(&'s self, prompt: &'p str, _default: bool) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Validator for ShellHelper {}

impl Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        split_words(s).unwrap()
    }

    #[test]
    fn words_split_on_blanks_and_keep_quoted_blanks() {
        assert_eq!(w("  upgrade system   image_path /tmp/a.pkg "), ["upgrade", "system", "image_path", "/tmp/a.pkg"]);
        assert_eq!(w(r#"upgrade system image_path "/tmp/my pkg" force"#)[3], "/tmp/my pkg");
        assert_eq!(w(r"image_path /tmp/my\ pkg")[1], "/tmp/my pkg");
        assert_eq!(w("a '' b"), ["a", "", "b"]);
        assert!(split_words("show 'cluster").unwrap_err().contains("unclosed"));
    }

    #[test]
    fn completion_follows_the_grammar() {
        let groups = vec!["g1".to_owned(), "g2".to_owned()];
        let c = |line: &str, partial: &str| candidates(&w(line), partial, &groups);
        assert_eq!(c("", ""), ["exit", "help", "history", "quit", "resume", "rollback", "show", "upgrade"]);
        assert_eq!(c("", "up"), ["upgrade"]);
        assert_eq!(c("upgrade", ""), ["abort", "pause", "prestage", "resume", "segroup", "system"]);
        assert_eq!(c("show", ""), ["cluster", "upgrade"]);
        assert_eq!(c("show upgrade", ""), ["status"]);
        assert_eq!(c("show upgrade status", "--"), ["--json", "--watch"]);
        assert_eq!(c("show upgrade status --watch", ""), ["--json"]);
        assert_eq!(c("upgrade system", ""), ["image_path"]);
        assert_eq!(
            c("upgrade system image_path x.pkg", ""),
            [
                "--json",
                "--no-wait",
                "action_on_error",
                "disruptive",
                "docker_image_path",
                "force",
                "max_parallel_ses",
                "max_transfers",
                "pause_after",
                "plan_hash",
                "prechecks_only",
                "se_group_order",
                "se_groups",
                "transfer_rate_mib"
            ]
        );
        // A list of groups, then the other words again.
        assert_eq!(c("upgrade system image_path x.pkg se_groups", ""), ["g1", "g2"]);
        assert_eq!(
            c("upgrade system image_path x.pkg se_groups g1", "p"),
            ["pause_after", "plan_hash", "prechecks_only"]
        );
        assert_eq!(c("upgrade system image_path x.pkg se_groups g1", "g"), ["g2"]);
        assert_eq!(c("upgrade system image_path x.pkg pause_after", ""), ["g1", "g2"]);
        assert_eq!(c("upgrade system image_path x.pkg se_group_order", ""), ["parallel", "series"]);
        assert!(c("upgrade system image_path x.pkg max_parallel_ses", "").is_empty(), "a number comes next");
        assert_eq!(c("upgrade system image_path x.pkg se_groups g1 max_transfers 2", "m"), ["max_parallel_ses"]);
        assert_eq!(c("upgrade segroup", ""), ["g1", "g2"]);
        assert_eq!(c("rollback", ""), ["segroup", "system"]);
        assert_eq!(c("upgrade system image_path x.pkg action_on_error", ""), ["continue", "rollback", "suspend"]);
        assert_eq!(c("upgrade system image_path x.pkg force", "di"), ["disruptive"]);
        assert_eq!(c("upgrade system image_path x.pkg force", "do"), ["docker_image_path"]);
        assert_eq!(c("resume segroup", ""), ["g1", "g2"]);
        assert_eq!(c("resume segroup g1", ""), ["--no-wait", "g2", "skip_suspended"]);
        assert_eq!(c("rollback segroup g1 g2", ""), ["--no-wait"]);
        assert!(c("bogus", "").is_empty());
    }

    #[test]
    fn completion_lists_files_after_image_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("controller-2.0.0.pkg"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("pkgs")).unwrap();
        let d = format!("{}/", dir.path().display());
        let found = candidates(&w("upgrade system image_path"), &d, &[]);
        assert_eq!(found, [format!("{d}controller-2.0.0.pkg"), format!("{d}pkgs/")]);
        let found = candidates(&w("upgrade system image_path"), &format!("{d}con"), &[]);
        assert_eq!(found, [format!("{d}controller-2.0.0.pkg")]);
        // And after docker_image_path.
        let found = candidates(&w("upgrade system image_path x.pkg docker_image_path"), &format!("{d}con"), &[]);
        assert_eq!(found, [format!("{d}controller-2.0.0.pkg")]);
    }

    #[test]
    fn help_lists_commands_or_one_topic() {
        let all = help(&[]);
        for c in COMMANDS {
            assert!(all.contains(c.synopsis), "{}", c.synopsis);
        }
        let one = help(&w("upgrade system"));
        assert!(one.contains("image_path PATH") && !one.contains("show cluster"), "{one}");
        assert!(help(&w("frobnicate")).contains("no command starts with"));
    }
}
