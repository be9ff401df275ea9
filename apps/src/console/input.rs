//! Where the menu's lines come from: the console on a terminal, plain lines otherwise
//! (piped input keeps the menu's output exactly as scripts expect it).

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Result};
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

use super::{available, Answer, Console, Known, Printer};

type StdinLines = Lines<BufReader<Stdin>>;

/// The lock's contents, also after a panic elsewhere (the tables stay usable).
pub(crate) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn prompt(text: &str) {
    print!("{text}");
    let _ = std::io::stdout().flush();
}

/// Where the menu's lines come from: the console on a terminal, else plain lines.
pub(crate) enum Input {
    /// Piped or redirected input: the prompt is printed, the line read as it comes.
    Plain {
        lines: StdinLines,
        /// The prompt showing, for the lines printed over it (see [`Printer::Plain`]).
        showing: Arc<Mutex<String>>,
    },
    Console(Console),
}

impl Input {
    /// The console when input and output are a terminal and it starts; plain lines otherwise.
    pub(crate) fn open(known: &Arc<Mutex<Known>>) -> Input {
        if available() {
            match Console::start(known.clone()) {
                Ok(console) => return Input::Console(console),
                Err(e) => eprintln!("warning: {e:#}; reading plain lines"),
            }
        }
        Input::Plain {
            lines: BufReader::new(tokio::io::stdin()).lines(),
            showing: Arc::default(),
        }
    }

    /// Where lines printed while a prompt shows go.
    pub(crate) fn printer(&self) -> Printer {
        match self {
            Input::Plain { showing, .. } => Printer::Plain(showing.clone()),
            Input::Console(console) => console.printer(),
        }
    }

    /// Shows `question` and starts reading its answer; menu commands are `remember`ed in the
    /// history.
    pub(crate) fn ask(&mut self, question: &str, remember: bool) {
        match self {
            Input::Plain { showing, .. } => {
                *locked(showing) = question.to_string();
                prompt(question);
            }
            Input::Console(console) => console.ask(question, remember),
        }
    }

    /// The answer to the last [`Input::ask`] (cancel-safe).
    pub(crate) async fn answer(&mut self) -> Answer {
        match self {
            Input::Plain { lines, showing } => {
                let line = lines.next_line().await;
                locked(showing).clear();
                match line {
                    Ok(Some(line)) => Answer::Line(line),
                    Ok(None) => Answer::Eof,
                    Err(e) => Answer::Failed(e.to_string()),
                }
            }
            Input::Console(console) => console.answer().await,
        }
    }
}

/// Asks `question` and returns the trimmed answer; fails when none comes.
pub(crate) async fn ask(input: &mut Input, question: &str) -> Result<String> {
    input.ask(question, false);
    match input.answer().await {
        Answer::Line(l) => Ok(l.trim().to_string()),
        Answer::Eof => bail!("no answer on standard input"),
        Answer::Interrupted => bail!("interrupted (Ctrl-C)"),
        Answer::Failed(e) => bail!("cannot read the terminal: {e}"),
    }
}
