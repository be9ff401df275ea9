//! Lines that arrive while the user types (upload notices, finished downloads) and the live
//! status lines of the downloads, printed above the prompt without garbling it.
//!
//! On the console, one thread owns rustyline's `ExternalPrinter`: rustyline clears the prompt,
//! prints the text and draws the prompt and what was typed anew. The status lines are kept as
//! one block just above the prompt and replaced in place each second (cursor up, clear), as
//! long as nothing else was printed below them; once a line is entered or a notice printed,
//! the next block starts below. Without a console, a line is printed over the prompt, which is
//! then printed again, as the menu always did.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use rustyline::ExternalPrinter;

/// Messages waiting for the screen thread, at most (more are dropped: a terminal that does
/// not keep up never holds up a transfer).
const QUEUE: usize = 256;

/// What the screen thread is asked to show.
#[derive(Debug, PartialEq)]
pub(crate) enum ScreenMsg {
    /// A line of its own, kept in the scrollback.
    Line(String),
    /// The downloads' live lines, replacing the previous block when that is still just
    /// above the prompt.
    Status(Vec<String>),
    /// A line was entered: what is above the prompt is no longer the status block (the
    /// screen thread makes this one itself, from [`PromptState::entered`]).
    Entered,
}

/// Where the asynchronous lines of the menu go.
#[derive(Clone)]
pub(crate) enum Printer {
    /// Plain output (piped input, or `--no-menu`): a line, then the prompt again if one was
    /// showing (its text is in the mutex; empty when there is none).
    Plain(Arc<Mutex<String>>),
    /// The console's screen thread.
    Console(Screen),
}

impl Printer {
    /// Plain output, without a prompt to restore.
    pub(crate) fn plain() -> Self {
        Printer::Plain(Arc::default())
    }

    /// Prints `text` as a line of its own, above the prompt.
    pub(crate) fn line(&self, text: String) {
        match self {
            Printer::Plain(prompt) => {
                let prompt = prompt.lock().unwrap_or_else(|e| e.into_inner());
                let mut out = std::io::stdout().lock();
                // Over the prompt line (its text is typed anew only when it was empty).
                let _ = if prompt.is_empty() {
                    writeln!(out, "{text}")
                } else {
                    write!(out, "\r{text}\n{prompt}")
                };
                let _ = out.flush();
            }
            Printer::Console(screen) => screen.send(ScreenMsg::Line(text)),
        }
    }

    /// The console's screen, when there is one (live status lines are shown only there).
    pub(crate) fn screen(&self) -> Option<&Screen> {
        match self {
            Printer::Console(screen) => Some(screen),
            Printer::Plain(_) => None,
        }
    }
}

/// The prompt as the reading thread tells it to the screen thread.
#[derive(Debug, Default)]
pub(crate) struct PromptState {
    /// Set while rustyline reads a line (its prompt is showing).
    pub(crate) reading: AtomicBool,
    /// Lines entered so far: a change means the status block is no longer above the prompt.
    pub(crate) entered: AtomicU64,
}

/// A handle on the screen thread.
#[derive(Clone)]
pub(crate) struct Screen {
    tx: SyncSender<ScreenMsg>,
    prompt: Arc<PromptState>,
}

impl Screen {
    /// Starts the thread that prints through `printer`; `prompt` tells when the prompt shows.
    pub(crate) fn start(
        printer: impl ExternalPrinter + Send + 'static,
        prompt: Arc<PromptState>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let state = prompt.clone();
        std::thread::Builder::new()
            .name("console-screen".into())
            .spawn(move || run(rx, printer, &state))?;
        Ok(Screen { tx, prompt })
    }

    /// Queues `msg` (dropped when the queue is full or the thread is gone).
    pub(crate) fn send(&self, msg: ScreenMsg) {
        match self.tx.try_send(msg) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Whether the prompt is showing: status lines are only worth sending then.
    pub(crate) fn prompt_showing(&self) -> bool {
        self.prompt.reading.load(Ordering::SeqCst)
    }
}

/// The screen thread: renders each message and hands it to rustyline.
fn run(rx: Receiver<ScreenMsg>, mut printer: impl ExternalPrinter, prompt: &PromptState) {
    let mut layout = Layout::default();
    let mut entered = 0;
    let width = || console::Term::stdout().size().1 as usize;
    while let Ok(msg) = rx.recv() {
        let now_entered = prompt.entered.load(Ordering::SeqCst);
        if now_entered != entered {
            entered = now_entered;
            layout.render(ScreenMsg::Entered, false, 0);
        }
        let reading = prompt.reading.load(Ordering::SeqCst);
        if let Some(text) = layout.render(msg, reading, width()) {
            if printer.print(text).is_err() {
                return;
            }
        }
    }
}

/// What is above the prompt: how many rows of status the screen thread printed last, with
/// nothing printed since.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    status_rows: usize,
}

impl Layout {
    /// The text to print for `msg` (None: nothing), given whether the prompt is showing and
    /// the terminal's width in columns.
    pub(crate) fn render(&mut self, msg: ScreenMsg, reading: bool, width: usize) -> Option<String> {
        if !reading {
            // Rustyline prints a line as it comes when no prompt shows: nothing to replace.
            self.status_rows = 0;
        }
        match msg {
            ScreenMsg::Entered => {
                self.status_rows = 0;
                None
            }
            ScreenMsg::Line(text) => {
                let out = format!("{}{text}\n", self.erase());
                self.status_rows = 0;
                Some(out)
            }
            // A block is only ever replaced by another, or by a line: erasing it alone would
            // leave a blank row above the prompt.
            ScreenMsg::Status(lines) if lines.is_empty() || !reading => None,
            ScreenMsg::Status(lines) => {
                let mut out = self.erase();
                for line in &lines {
                    // One row each, so that the next block knows how far up to go.
                    out.push_str(&console::truncate_str(line, width.saturating_sub(1), "…"));
                    out.push('\n');
                }
                self.status_rows = lines.len();
                Some(out)
            }
        }
    }

    /// Moves up over the last status block and clears from there down, when there is one.
    fn erase(&self) -> String {
        match self.status_rows {
            0 => String::new(),
            rows => format!("\x1b[{rows}A\r\x1b[J"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Layout, ScreenMsg};

    fn status(lines: &[&str]) -> ScreenMsg {
        ScreenMsg::Status(lines.iter().map(|l| l.to_string()).collect())
    }

    #[test]
    fn status_block_is_replaced_in_place_while_the_prompt_shows() {
        let mut l = Layout::default();
        assert_eq!(l.render(status(&["a", "b"]), true, 80).unwrap(), "a\nb\n");
        assert_eq!(
            l.render(status(&["a2", "b2"]), true, 80).unwrap(),
            "\x1b[2A\r\x1b[Ja2\nb2\n"
        );
        // A notice takes the block's place; the next block comes below it.
        assert_eq!(
            l.render(ScreenMsg::Line("[bob] Saved".into()), true, 80)
                .unwrap(),
            "\x1b[2A\r\x1b[J[bob] Saved\n"
        );
        assert_eq!(l.render(status(&["b3"]), true, 80).unwrap(), "b3\n");
    }

    #[test]
    fn after_a_line_is_entered_nothing_above_is_erased() {
        let mut l = Layout::default();
        l.render(status(&["a"]), true, 80);
        assert_eq!(l.render(ScreenMsg::Entered, true, 80), None);
        assert_eq!(l.render(status(&["a"]), true, 80).unwrap(), "a\n");
        // No prompt showing: no status, and lines are printed as they come.
        assert_eq!(l.render(status(&["a"]), false, 80), None);
        assert_eq!(
            l.render(ScreenMsg::Line("x".into()), false, 80).unwrap(),
            "x\n"
        );
    }

    #[test]
    fn an_empty_status_erases_nothing_and_long_lines_fit_one_row() {
        let mut l = Layout::default();
        l.render(status(&["a"]), true, 80);
        assert_eq!(l.render(status(&[]), true, 80), None);
        let long = "x".repeat(100);
        let shown = l.render(status(&[&long]), true, 20).unwrap();
        assert_eq!(shown, format!("\x1b[1A\r\x1b[J{}…\n", "x".repeat(18)));
    }
}
