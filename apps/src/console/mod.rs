//! The menu's console on a terminal: line editing, history and tab completion (rustyline),
//! with lines printed above the prompt while the user types.
//!
//! Rustyline reads a line by blocking, so it runs on a thread of its own: the menu asks for a
//! line with a prompt ([`Console::ask`]) and awaits the answer on a tokio channel
//! ([`Console::answer`], cancel-safe, so the menu can wait for signals at the same time).
//! Without a terminal the menu reads plain lines instead (see `commands::peer`), so scripts
//! that pipe commands in see exactly what they always did.

mod complete;
mod input;
mod screen;
mod status;
mod uploads;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use anyhow::{Context, Result};
use rustyline::config::Configurer;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{CompletionType, Config, Editor};
use tokio::sync::mpsc;

pub(crate) use complete::{Known, KnownFile};
pub(crate) use input::{ask, locked, Input};
pub(crate) use screen::{Printer, Screen, ScreenMsg};

use screen::PromptState;
pub(crate) use status::{download_line, Meter};
pub(crate) use uploads::Uploads;

use complete::MenuHelper;

/// Commands kept in the history file, at most.
const HISTORY_SIZE: usize = 1000;

/// What came of asking for a line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A line, without its newline.
    Line(String),
    /// End of input (Ctrl-D on an empty line, or the input closed).
    Eof,
    /// Ctrl-C.
    Interrupted,
    /// The terminal failed (the text says how).
    Failed(String),
}

/// A request to the reading thread: show `prompt`, read a line, and keep it in the history
/// when `remember` (menu commands are; answers to questions are not).
struct Ask {
    prompt: String,
    remember: bool,
}

/// Whether the menu can run as a console: input and output are both a terminal.
pub(crate) fn available() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// The console: its reading thread and its screen.
pub(crate) struct Console {
    asks: std_mpsc::Sender<Ask>,
    answers: mpsc::UnboundedReceiver<Answer>,
    screen: Screen,
    prompt: Arc<PromptState>,
    /// The terminal's settings before rustyline touched them, put back on drop: a signal may
    /// end the menu while rustyline holds the terminal in raw mode.
    saved: Option<nix::sys::termios::Termios>,
}

impl Console {
    /// Starts the console; completion offers what `known` holds.
    pub(crate) fn start(known: Arc<Mutex<Known>>) -> Result<Console> {
        let saved = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
        let (asks, asked) = std_mpsc::channel::<Ask>();
        let (answer_tx, answers) = mpsc::unbounded_channel();
        let prompt = Arc::new(PromptState::default());
        let (ready_tx, ready) = std_mpsc::channel();
        let state = prompt.clone();
        std::thread::Builder::new()
            .name("console-input".into())
            .spawn(move || {
                let mut editor = match editor(known) {
                    Ok(e) => e,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let printer = editor
                    .create_external_printer()
                    .context("cannot print above the prompt");
                if ready_tx.send(printer).is_err() {
                    return;
                }
                read_lines(&mut editor, &asked, &answer_tx, &state);
            })
            .context("cannot start the console's thread")?;
        let printer = ready
            .recv()
            .context("the console's thread ended at start")??;
        let screen = Screen::start(printer, prompt.clone())
            .context("cannot start the console's screen thread")?;
        Ok(Console {
            asks,
            answers,
            screen,
            prompt,
            saved,
        })
    }

    /// Shows `prompt` and starts reading a line; [`Console::answer`] returns it.
    pub(crate) fn ask(&self, prompt: &str, remember: bool) {
        let _ = self.asks.send(Ask {
            prompt: prompt.to_string(),
            remember,
        });
    }

    /// The answer to the last [`Console::ask`] (cancel-safe).
    pub(crate) async fn answer(&mut self) -> Answer {
        self.answers
            .recv()
            .await
            .unwrap_or_else(|| Answer::Failed("the console's thread ended".into()))
    }

    /// Where lines that arrive while the user types go.
    pub(crate) fn printer(&self) -> Printer {
        Printer::Console(self.screen.clone())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if self.prompt.reading.load(Ordering::SeqCst) {
            // Rustyline is still reading (a signal ended the menu): bracketed paste off, and
            // the terminal's own settings back.
            print!("\x1b[?2004l");
            if let Some(saved) = &self.saved {
                let _ = nix::sys::termios::tcsetattr(
                    std::io::stdin(),
                    nix::sys::termios::SetArg::TCSANOW,
                    saved,
                );
            }
        }
    }
}

/// The editor: list completion as a shell does, the history loaded from its file.
fn editor(known: Arc<Mutex<Known>>) -> Result<Editor<MenuHelper, DefaultHistory>> {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .max_history_size(HISTORY_SIZE)
        .and_then(|b| b.history_ignore_dups(true))
        .context("cannot configure the console")?
        .build();
    let mut editor = Editor::with_config(config).context("cannot open the terminal")?;
    editor.set_helper(Some(MenuHelper { known }));
    editor.set_auto_add_history(false);
    if let Some(path) = history_file() {
        // A first run has no history yet; an unreadable one is started afresh.
        let _ = editor.load_history(&path);
    }
    Ok(editor)
}

/// Where the menu's history is kept: `p2p/menu-history` in the platform's data folder
/// (`$XDG_DATA_HOME`, or `~/.local/share` on Linux). None when there is no home folder.
pub(crate) fn history_file() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "p2p")?;
    Some(dirs.data_dir().join("menu-history"))
}

/// The reading thread: a line per [`Ask`], until the menu goes.
fn read_lines(
    editor: &mut Editor<MenuHelper, DefaultHistory>,
    asked: &std_mpsc::Receiver<Ask>,
    answers: &mpsc::UnboundedSender<Answer>,
    prompt: &PromptState,
) {
    let history = history_file();
    let mut history_ok = history
        .as_ref()
        .and_then(|p| p.parent())
        .is_some_and(|dir| std::fs::create_dir_all(dir).is_ok());
    while let Ok(ask) = asked.recv() {
        prompt.reading.store(true, Ordering::SeqCst);
        let read = editor.readline(&ask.prompt);
        prompt.reading.store(false, Ordering::SeqCst);
        prompt.entered.fetch_add(1, Ordering::SeqCst);
        let answer = match read {
            Ok(line) => {
                if ask.remember && !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.trim());
                    if let (true, Some(path)) = (history_ok, &history) {
                        // Appended at once: a menu ended by a signal keeps its history too.
                        history_ok = editor.append_history(path).is_ok();
                    }
                }
                Answer::Line(line)
            }
            Err(ReadlineError::Eof) => Answer::Eof,
            Err(ReadlineError::Interrupted) => Answer::Interrupted,
            Err(e) => Answer::Failed(e.to_string()),
        };
        if answers.send(answer).is_err() {
            return;
        }
    }
}
